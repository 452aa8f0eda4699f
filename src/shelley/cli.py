"""The ``shelley`` command line: a thin layer that maps commands to library functions.

Heavy libraries (torch, transformers, datasets, matplotlib) are imported inside the commands that need
them, so ``shelley --help`` answers instantly.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from shelley.errors import ShelleyError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    help="shelley: fine-tune a language model to write in one author's voice.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Corpus: fetch, inspect, clean and build datasets, check tokenizers.", no_args_is_help=True)
config_app = typer.Typer(help="Show the configuration and what every key means.", no_args_is_help=True)
models_app = typer.Typer(help="Base model presets and offline import.", no_args_is_help=True)
fetch_app = typer.Typer(help="Download corpora (needs internet).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
tokenizer_app = typer.Typer(help="Train a byte-level BPE tokenizer for a scratch GPT.", no_args_is_help=True)
style_app = typer.Typer(help="Stylometry: who wrote a text, and how it compares with a corpus.", no_args_is_help=True)
app.add_typer(style_app, name="style")
app.add_typer(tokenizer_app, name="tokenizer")
data_app.add_typer(fetch_app, name="fetch")

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config file or preset name (`shelley config presets`).", show_default=False
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: --set data.seed=7 (repeatable).", show_default=False),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the output if it exists.")]


def user_errors(fn: F) -> F:
    """Turn ShelleyError into one red line on stderr and exit code 2, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ShelleyError as exc:
            label = "[bold yellow]stopped:[/bold yellow]" if exc.exit_code == 130 else "[bold red]error:[/bold red]"
            from rich.markup import escape  # a message may hold [brackets], e.g. data.extra_sources=[chat]

            err_console.print(f"{label} {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; nothing was written")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _load(config: Path | None, sets: list[str] | None, **flags: Any):
    """Load the config, then apply the command's own flags (they win over --config and --set)."""
    from pydantic import ValidationError

    from shelley.config import load_config

    cfg = load_config(config, sets or [])
    for dotted, (flag, value) in flags.items():
        if value is None:
            continue
        section, key = dotted.split(".")
        try:
            setattr(getattr(cfg, section), key, value)
        except ValidationError as exc:
            raise ShelleyError(f"invalid {flag} {value!r}: {exc.errors()[0]['msg']}") from None
    return cfg


def _corpus_source(corpus: Path | None, cfg) -> Path:
    source = corpus or (Path(cfg.data.source) if cfg.data.source else None)
    if source is None:
        raise ShelleyError("no corpus given; pass a CORPUS path or set data.source in the config")
    return source


# ------------------------------------------------------------------------------------------------ data

CorpusArg = Annotated[
    Path | None,
    typer.Argument(help="Corpus file (.csv with a `text` column, .txt / Gutenberg book, .jsonl).", show_default=False),
]
FormatOpt = Annotated[str | None, typer.Option("--format", help="auto, csv, txt, gutenberg or jsonl.")]
TextColOpt = Annotated[str | None, typer.Option("--text-column", help="CSV column / JSONL field with the text.")]
EncodingOpt = Annotated[str | None, typer.Option("--encoding", help="Text encoding of the corpus file.")]
TokenizerOpt = Annotated[
    str | None,
    typer.Option("--tokenizer", help="Tokenizer preset, path or Hub id; `none` to skip token counts."),
]


def _data_flags(fmt: str | None, text_column: str | None, encoding: str | None) -> dict[str, tuple[str, Any]]:
    return {
        "data.format": ("--format", fmt),
        "data.text_column": ("--text-column", text_column),
        "data.encoding": ("--encoding", encoding),
    }


@data_app.command("inspect")
@user_errors
def data_inspect(
    corpus: CorpusArg = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Report directory (default: reports/<corpus>).")
    ] = None,
    tokenizer: TokenizerOpt = None,
    fmt: FormatOpt = None,
    text_column: TextColOpt = None,
    encoding: EncodingOpt = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """EDA of a corpus: counts, lengths, noise, duplicates; writes report.md, stats.json and PNG histograms."""
    from shelley.io import atomic_dir, check_output_dir

    cfg = _load(config, sets, **_data_flags(fmt, text_column, encoding))
    source = _corpus_source(corpus, cfg)
    out = out or Path("reports") / source.stem
    check_output_dir(out, overwrite=overwrite)  # before any work: fail fast, write nothing
    from shelley.data.build import clean_kwargs, load_corpus
    from shelley.data.inspect import inspect_corpus, write_inspect_report

    with err_console.status("reading corpus"):
        snippets, fmt_used = load_corpus(source, cfg.data)
    tok = None
    tok_name = tokenizer or cfg.model.tokenizer or cfg.model.name
    if tok_name.lower() != "none":
        from shelley.models.registry import load_tokenizer

        with err_console.status(f"loading tokenizer {tok_name}"):
            tok = load_tokenizer(tok_name, trust_remote_code=cfg.model.trust_remote_code)
    with err_console.status("measuring"):
        stats, lengths = inspect_corpus(snippets, tokenizer=tok, clean_kwargs=clean_kwargs(cfg.data))
    stats["format"] = fmt_used
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_inspect_report(stats, lengths, str(source), tmp)
    _print_inspect_summary(stats)
    console.print(f"report written to [bold]{out}[/bold] (report.md, stats.json, PNG histograms)")


def _print_inspect_summary(stats: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title="corpus", show_header=False)
    t.add_row("format", stats["format"])
    t.add_row("rows", f"{stats['rows']:,} ({stats['rows_after_cleaning']:,} after cleaning)")
    t.add_row("characters / words", f"{stats['characters']['total']:,} / {stats['words']['total']:,}")
    if "tokens" in stats:
        t.add_row(
            "tokens",
            f"{stats['tokens']['total']:,} (mean {stats['tokens']['mean']}, max {stats['tokens']['max']})",
        )
    t.add_row("noise rows", str(stats["noise_rows"]["count"]))
    t.add_row("exact duplicates", str(stats["exact_duplicates"]))
    t.add_row("non-ASCII chars", " ".join(c["char"] for c in stats["non_ascii"][:20]) or "none")
    t.add_row("chapters/letters", str(stats["sections"]["count"]))
    console.print(t)


@data_app.command("build")
@user_errors
def data_build(
    corpus: CorpusArg = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Dataset directory (default: data.out).")] = None,
    fmt: FormatOpt = None,
    text_column: TextColOpt = None,
    encoding: EncodingOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Split seed (default: data.seed).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="section, block or random.")] = None,
    push_to_hub: Annotated[
        str | None, typer.Option("--push-to-hub", help="Also upload to this Hub dataset repo (private).")
    ] = None,
    public: Annotated[bool, typer.Option("--public", help="Create the Hub repo public.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --push-to-hub: list files, upload nothing.")] = False,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Clean the corpus and save a train/validation DatasetDict (split by chapters, leakage reported)."""
    from shelley.io import check_output_dir

    flags = _data_flags(fmt, text_column, encoding)
    flags |= {"data.seed": ("--seed", seed), "data.split": ("--split", split)}
    cfg = _load(config, sets, **flags)
    source = _corpus_source(corpus, cfg)
    out = out or Path(cfg.data.out)
    check_output_dir(out, overwrite=overwrite)
    from shelley.data.build import prepare_splits, save_dataset
    from shelley.hub.push import push_dataset

    with err_console.status("reading, cleaning and splitting"):
        splits, report = prepare_splits(source, cfg.data)
    with err_console.status("saving dataset"):
        save_dataset(splits, report, out, overwrite=overwrite)
    _print_build_summary(report)
    console.print(f"dataset saved to [bold]{out}[/bold] (datasets.load_from_disk); report in build.md")
    if push_to_hub:
        files = push_dataset(out, push_to_hub, private=not public, dry_run=dry_run)
        verb = "would upload" if dry_run else "uploaded"
        console.print(f"{verb} {len(files)} files to {push_to_hub} ({'public' if public else 'private'}):")
        for name, size in files:
            console.print(f"  {name}  {size:,} bytes", highlight=False)


def _print_build_summary(report: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title="cleaning")
    for col in ("step", "changed", "removed", "remaining"):
        t.add_column(col, justify="left" if col == "step" else "right")
    for c in report["cleaning"]:
        t.add_row(c["step"], str(c["changed"]), str(c["removed"]), str(c["remaining"]))
    console.print(t)
    sp = report["split"]
    rows = ", ".join(f"{k} {v}" for k, v in sp["rows"].items())
    console.print(f"split by [bold]{sp['method']}[/bold] (seed {sp['seed']}): {rows}")
    if sp["note"]:
        console.print(f"[yellow]note:[/yellow] {sp['note']}")
    for name, groups in sp["held_out_groups"].items():
        console.print(f"{name} holds out: {', '.join(groups[:12])}{' …' if len(groups) > 12 else ''}")
    for name, ov in report["overlap"].items():
        console.print(
            f"leakage check: {ov['shared_ngram_occurrences']} of {ov['held_out_ngrams']} {name} word {ov['n']}-grams "
            f"({100 * ov['shared_fraction']:.2f}%) also occur in train; worst row shares {ov['max_shared_in_one_row']}"
        )


@data_app.command("tokens")
@user_errors
def data_tokens(
    corpus: Annotated[
        Path | None, typer.Argument(help="Corpus file or a dataset directory from `shelley data build`.")
    ] = None,
    tokenizer: TokenizerOpt = None,
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Sequence length (default: model.max_length).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Batch size for the padding comparison.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    fmt: FormatOpt = None,
    text_column: TextColOpt = None,
    encoding: EncodingOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Tokenizer sanity check: round trip, tokens per snippet, truncation, padding sides, packing efficiency."""
    flags = _data_flags(fmt, text_column, encoding) | {"model.max_length": ("--max-length", max_length)}
    cfg = _load(config, sets, **flags)
    source = _corpus_source(corpus, cfg)
    texts = _texts_for_token_check(source, cfg)
    from shelley.data.tokens import token_check
    from shelley.models.registry import load_tokenizer

    tok_name = tokenizer or cfg.model.tokenizer or cfg.model.name
    with err_console.status(f"loading tokenizer {tok_name}"):
        tok = load_tokenizer(tok_name, trust_remote_code=cfg.model.trust_remote_code)
    result = token_check(texts, tok, max_length=cfg.model.max_length, batch_size=batch_size)
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    _print_token_check(result)


def _texts_for_token_check(source: Path, cfg) -> list[str]:
    if source.is_dir() and (source / "dataset_dict.json").exists():
        from datasets import load_from_disk

        ds = load_from_disk(str(source))
        return list(ds["train"]["text"])
    from shelley.data.build import clean_kwargs, load_corpus
    from shelley.data.clean import clean_snippets

    snippets, _ = load_corpus(source, cfg.data)
    kept, _ = clean_snippets(snippets, **clean_kwargs(cfg.data))
    if not kept:
        raise ShelleyError(f"all rows of {source} are empty or noise after cleaning; check --text-column")
    return [s.text for s in kept]


def _print_token_check(r: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"tokenizer {r['tokenizer']}", show_header=False)
    t.add_row("vocab size", f"{r['vocab_size']:,}")
    sp = r["special_tokens"]
    t.add_row("special tokens", f"bos={sp['bos']!r} eos={sp['eos']!r} pad={sp['pad']!r}")
    rt = r["roundtrip"]
    ok = "[green]ok[/green]" if rt["failed"] == 0 else f"[red]{rt['failed']} failed[/red]"
    t.add_row("encode/decode round trip", f"{rt['checked']} rows checked: {ok}")
    tp = r["tokens_per_row"]
    t.add_row("tokens per snippet", f"mean {tp['mean']}, max {tp['max']}, total {tp['total']:,}")
    t.add_row(f"truncated at max_length={r['max_length']}", f"{100 * r['truncated_share']:.2f}% of rows")
    ps = r["pad_share"]
    t.add_row(
        f"pad share (batch {r['batch_size']})",
        f"pad to max_length {100 * ps['pad_to_max_length']:.1f}%"
        f" · pad to longest {100 * ps['pad_to_longest_in_batch']:.1f}%"
        f" · packing {100 * ps['packing']:.2f}%",
    )
    console.print(t)
    for f in rt["failures"][:3]:
        console.print(
            f"[red]round trip changed row {f['row']}:[/red] {f['text']!r} -> {f['decoded']!r}",
            highlight=False,
        )
    console.print("left-padded generation batch (attention masks):", r["left_padding_demo"], highlight=False)
    console.print(r["padding_note"])


@fetch_app.command("gutenberg")
@user_errors
def data_fetch_gutenberg(
    ebook_id: Annotated[int, typer.Argument(help="Project Gutenberg ebook number (84: Frankenstein).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default: data/pg<ID>.txt).")] = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Download a Project Gutenberg ebook as UTF-8 text (headers are stripped later, at ingest)."""
    from shelley.data.fetch import fetch_gutenberg

    _load(config, sets)
    out = out or Path("data") / f"pg{ebook_id}.txt"
    with err_console.status(f"downloading ebook {ebook_id}"):
        fetch_gutenberg(ebook_id, out, overwrite=overwrite)
    console.print(f"saved ebook {ebook_id} to [bold]{out}[/bold]; next: shelley data inspect {out}")


@fetch_app.command("reference")
@user_errors
def data_fetch_reference(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder to write (default: eval.reference_dir).")
    ] = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Download the reference set for attribution: twelve period novels by other authors, from Project Gutenberg."""
    from shelley.data.books import default_reference_dir, fetch_reference

    cfg = _load(config, sets)
    out = out or Path(cfg.eval.reference_dir or default_reference_dir())
    with err_console.status("downloading") as status:
        fetch_reference(out, overwrite=overwrite, on_book=lambda b: status.update(f"downloading {b.title}"))
    console.print(f"reference set saved to [bold]{out}[/bold] (MANIFEST.json and 12 books)")


# ------------------------------------------------------------------------------------- train / eval / run

RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="Run directory (default: train.run_dir).")]


@app.command("train")
@user_errors
def train_cmd(
    dataset: Annotated[
        Path | None,
        typer.Argument(help="Dataset dir from `shelley data build`, or a corpus file (default: data.source)."),
    ] = None,
    run_dir: RunDirOpt = None,
    method: Annotated[
        str | None, typer.Option("--method", help="full, lora, qlora, or scratch (a new GPT, its own tokenizer).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model preset, path or Hub id.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run dir's last checkpoint.")] = False,
    merge: Annotated[bool | None, typer.Option("--merge", help="LoRA: also save the merged model.")] = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Fine-tune (full / LoRA / QLoRA) on one accelerate loop; `accelerate launch` scales it out."""
    flags = {
        "train.method": ("--method", method),
        "model.name": ("--model", model),
        "train.merge": ("--merge", merge),
        "train.run_dir": ("--run-dir", str(run_dir) if run_dir else None),
    }
    cfg = _load(config, sets, **flags)
    train_texts, val_texts = _training_texts(dataset, cfg)
    from shelley.data.books import describe_corpus
    from shelley.finetune.loop import train

    describe_corpus(cfg, _identity_source(dataset, cfg), val_texts)  # recorded in the run's config.yaml

    from shelley.generate import generate_texts

    run_dir = Path(cfg.train.run_dir)
    result = train(cfg, train_texts, val_texts, run_dir, resume=resume, overwrite=overwrite, sampler=generate_texts)
    last = result.evals[-1] if result.evals else {}
    console.print(
        f"trained {result.steps} steps in {result.train_seconds:.0f} s ({result.tokens_per_second:.0f} tokens/s); "
        f"validation perplexity {last.get('val_perplexity', float('nan')):.2f}; "
        f"outputs in [bold]{result.output_dir}[/bold]"
    )


def _identity_source(dataset: Path | None, cfg) -> str | None:
    """The corpus file behind a training argument: the file itself, or the source a dataset dir was built from."""
    from shelley.data.build import build_source

    path = dataset or (Path(cfg.data.source) if cfg.data.source else None)
    if path is not None and path.is_dir():
        return build_source(path)
    return str(path) if path else None


def _training_texts(dataset: Path | None, cfg) -> tuple[list[str], list[str]]:
    """The corpus split (a dataset dir, a corpus file, or data.source) plus any data.extra_sources."""
    from shelley.data.build import train_val_texts
    from shelley.data.sources import with_sources

    if dataset is None and Path(cfg.data.out).exists():
        dataset = Path(cfg.data.out)
    if dataset is None and not cfg.data.source and cfg.data.extra_sources:
        train_texts, val_texts = [], []  # extra sources only
    else:
        train_texts, val_texts = train_val_texts(dataset or _corpus_source(None, cfg), cfg.data)
    return with_sources(train_texts, val_texts, cfg.data, on_note=lambda m: err_console.print(m, highlight=False))


PIPELINE_KEYS = ("time_budget_s", "wall_seconds", "train_budget_s", "seconds", "data")


def _voice_progress():
    """A rich progress bar for the attribution text generation, and the callback that drives it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("writing {task.description} text for attribution"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("words"),
        TimeElapsedColumn(),
        console=err_console,
    )
    tasks: dict[str, Any] = {}

    def on_progress(who: str, done: int, total: int) -> None:
        if who not in tasks:
            tasks[who] = progress.add_task(who, total=total)
        progress.update(tasks[who], completed=done)

    return progress, on_progress


def _print_attribution(results: dict[str, Any]) -> None:
    from shelley.eval.voice import summary_lines

    if "attribution" in results:
        labels = results.get("labels", {"base": "base", "finetuned": "fine-tuned"})
        for line in summary_lines(results["attribution"], labels):
            console.print(line, highlight=False, markup=False)
    elif results.get("attribution_skipped"):
        console.print(f"attribution skipped: {results['attribution_skipped']}", highlight=False, markup=False)


@app.command("eval")
@user_errors
def eval_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of `shelley train`.")],
    prompts: Annotated[
        str | None,
        typer.Option(
            "--prompts",
            help="Prompt set: prose (the corpus's own), math, code, or a .txt (one per line) / .jsonl file.",
        ),
    ] = None,
    attribution: Annotated[
        bool, typer.Option("--attribution", help="Who-wrote-this test: base vs fine-tuned vs the author's text.")
    ] = False,
    bags: Annotated[
        int | None, typer.Option("--bags", min=1, help="Bags of text per model for --attribution [default 20].")
    ] = None,
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Reference set of other authors (default: eval.reference_dir).")
    ] = None,
    bag_words: Annotated[
        int | None, typer.Option("--bag-words", min=1, help="Words per attribution bag [default eval.bag_words].")
    ] = None,
) -> None:
    """Base vs trained perplexity on the same validation tokens, side-by-side generations -> eval.md/json/html."""
    from shelley.eval.report import evaluate_run, load_run, write_eval

    prompt_set = None
    if prompts is not None:
        from shelley.eval.prompts import load_prompts

        prompt_set = load_prompts(prompts)
    n_bags = None
    if attribution:
        n_bags = bags or load_run(run_dir)[0].eval.attribution_bags
    progress, on_progress = _voice_progress()
    with err_console.status("evaluating base and trained models"), progress:
        results = evaluate_run(
            run_dir,
            prompts=prompt_set,
            attribution_bags=n_bags,
            reference_dir=str(reference) if reference else None,
            bag_words=bag_words,
            on_progress=on_progress,
        )
    previous = run_dir / "eval.json"
    if previous.exists():  # keep what `shelley run` measured about the whole job (budget, wall time, data)
        try:
            old = json.loads(previous.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        results = {k: old[k] for k in PIPELINE_KEYS if k in old} | results
        if "attribution" not in results and "attribution" in old:  # same model: an earlier attribution still holds
            results["attribution"] = old["attribution"]
    results = write_eval(run_dir, results)
    p = results["perplexity"]
    lb = results.get("labels", {"base": "base", "finetuned": "fine-tuned"})
    console.print(
        f"validation perplexity: {lb['base']} {p['base']['perplexity']:.2f} -> {lb['finetuned']} "
        f"{p['finetuned']['perplexity']:.2f} (x{p['ratio']:.3f}); report in [bold]{run_dir / 'eval.md'}[/bold]"
    )
    if "unigram" in results:
        u = results["unigram"]
        console.print(
            f"loss {p['finetuned']['nll']:.3f} nats/token vs unigram entropy {u['entropy']:.3f} "
            f"(train-fitted unigram {u['cross_entropy']:.3f})"
        )
    _print_attribution(results)


@app.command("run")
@user_errors
def run_cmd(
    corpus: CorpusArg = None,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Where data, training and reports go.")] = Path("runs/run"),
    time_budget: Annotated[
        float, typer.Option("--time-budget", min=1, help="Wall-clock seconds for the whole job (default 10 min).")
    ] = 600,
    method: Annotated[
        str | None, typer.Option("--method", help="full or lora (default: full, measured faster here).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model preset, path or Hub id.")] = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """The main job: corpus -> clean -> split -> fine-tune -> eval -> report, within --time-budget."""
    from shelley.pipeline import run_pipeline

    if config is None:
        config = _default_run_config()
    cfg = _load(config, sets, **{"train.method": ("--method", method), "model.name": ("--model", model)})
    source = _corpus_source(corpus, cfg)
    progress, on_progress = _voice_progress()
    with progress:
        results = run_pipeline(
            cfg, source, run_dir, time_budget_s=time_budget, overwrite=overwrite, on_progress=on_progress
        )
    p = results["perplexity"]
    console.print(
        f"validation perplexity: base {p['base']['perplexity']:.2f} -> fine-tuned {p['finetuned']['perplexity']:.2f} "
        f"(x{p['ratio']:.3f}) in {results['wall_seconds']:.0f} s; report in [bold]{run_dir / 'eval.md'}[/bold]"
    )
    _print_attribution(results)


# ----------------------------------------------------------------------------------------------- write


def _index_for(loaded, corpus: Path | None, index_path: Path | None, cfg):
    """The originality index: an explicit --index file (checked against the corpus by hash), else the run's own,
    else one built from --corpus and cached under SHELLEY_HOME/indexes."""
    from shelley.eval.originality import CorpusIndex, corpus_hash, index_for_rows

    if corpus is None and loaded.run_dir is None:
        raise ShelleyError("the originality check needs the training corpus: pass a run dir as MODEL or --corpus FILE")
    from shelley.eval.originality import corpus_rows

    rows = corpus_rows(corpus or loaded.run_dir, cfg.data)
    if index_path is not None:
        if not index_path.exists():
            raise ShelleyError(f"originality index not found: {index_path}; drop --index to build one")
        return CorpusIndex.load(index_path, expect_sha256=corpus_hash(rows))
    if corpus is None:
        return index_for_rows(rows, loaded.run_dir / "originality-index.npz")
    from shelley.models.registry import shelley_home

    return index_for_rows(rows, shelley_home() / "indexes" / f"{corpus_hash(rows)[:16]}.npz")


TemperatureOpt = Annotated[float | None, typer.Option("--temperature", "-t", help="0 decodes greedily.")]
TopPOpt = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass in (0, 1].")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Sampling seed.")]
BaseOpt = Annotated[str | None, typer.Option("--base", help="Base model of an adapter, if not its own.")]


@app.command("write")
@user_errors
def write_cmd(
    model: Annotated[str, typer.Argument(help="Run dir, model or adapter dir, preset or Hub id.")],
    prompts: Annotated[
        list[str] | None, typer.Argument(help="Prompts to continue (several are batched; none: unconditional).")
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", "-n", help="Tokens per sample.")] = None,
    min_new_tokens: Annotated[
        int | None, typer.Option("--min-new-tokens", help="Suppress end-of-text before this many tokens.")
    ] = None,
    num_samples: Annotated[int | None, typer.Option("--samples", help="Samples per prompt.")] = None,
    temperature: TemperatureOpt = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Greedy decoding (no sampling).")] = False,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Top-k sampling (0: off).")] = None,
    top_p: TopPOpt = None,
    repetition_penalty: Annotated[float | None, typer.Option("--repetition-penalty", help="1: off.")] = None,
    no_repeat_ngram: Annotated[int | None, typer.Option("--no-repeat-ngram", help="Forbid repeated n-grams.")] = None,
    seed: SeedOpt = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop a sample at this string (repeatable).")] = None,
    original: Annotated[
        bool, typer.Option("--original", help="Re-sample any output that copies too long a span of the corpus.")
    ] = False,
    max_span: Annotated[
        int | None, typer.Option("--max-span", help="Longest copied span (words) --original accepts [default 12].")
    ] = None,
    tries: Annotated[int, typer.Option("--tries", min=1, help="Samples drawn at most per output with --original.")] = 5,
    corpus: Annotated[
        Path | None, typer.Option("--corpus", help="Corpus for the originality check (default: the run's).")
    ] = None,
    index: Annotated[Path | None, typer.Option("--index", help="A saved originality index (.npz).")] = None,
    base: BaseOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Continue prompts in the author's voice; reports (and with --original avoids) copying from the corpus."""
    flags = {
        "generation.max_new_tokens": ("--max-new-tokens", max_new_tokens),
        "generation.min_new_tokens": ("--min-new-tokens", min_new_tokens),
        "generation.num_samples": ("--samples", num_samples),
        "generation.temperature": ("--temperature", temperature),
        "generation.top_k": ("--top-k", top_k),
        "generation.top_p": ("--top-p", top_p),
        "generation.repetition_penalty": ("--repetition-penalty", repetition_penalty),
        "generation.no_repeat_ngram_size": ("--no-repeat-ngram", no_repeat_ngram),
        "generation.seed": ("--seed", seed),
        "generation.stop": ("--stop", stop),
        "generation.do_sample": ("--greedy", False if greedy else None),
        "eval.max_copied_span": ("--max-span", max_span),
    }
    cfg = _load(config, sets, **flags)
    prompts = list(prompts or [""])
    from shelley.generate import check_generation
    from shelley.generate.load import load_for_generation
    from shelley.generate.write import write

    check_generation(cfg.generation)  # before loading any model
    with err_console.status(f"loading {model}"):
        loaded = load_for_generation(model, base=base, trust_remote_code=cfg.model.trust_remote_code)
    want_index = original or corpus is not None or index is not None or loaded.run_dir is not None
    idx = _index_for(loaded, corpus, index, cfg) if want_index else None
    single = len(prompts) * cfg.generation.num_samples == 1
    streamer = _streamer(loaded.tokenizer, prompts[0]) if single and not as_json and not original else None
    results = write(
        loaded.model,
        loaded.tokenizer,
        prompts,
        cfg.generation,
        index=idx,
        original=original,
        max_span=cfg.eval.max_copied_span,
        tries=tries,
        on_note=_note,
        streamer=streamer,
    )
    if as_json:
        doc = {"model": loaded.source, "generation": cfg.generation.model_dump(mode="json"), "samples": results}
        sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
        return
    _print_written(results, streamed=streamer is not None)


def _note(msg: str) -> None:
    err_console.print(f"[yellow]note:[/yellow] {msg}", highlight=False)


def _streamer(tokenizer, prompt: str):
    """Print the prompt, then the one sample token by token as it is generated."""
    from transformers import TextStreamer

    console.print(prompt, end="", highlight=False)
    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _print_written(results: list[dict[str, Any]], *, streamed: bool) -> None:
    """Each sample under a rule (unless it was streamed), with what it copied from the corpus."""
    for r in results:
        if not streamed:
            console.rule(f"{r['prompt'][:50]!r} · sample {r['sample']}", style="dim")
            console.print(r["prompt"] + r["text"], highlight=False, markup=False)
        if "originality" in r:
            o = r["originality"]
            where = o["location"]
            src = f" (from {where['split']} row {where['row']})" if where and o["longest_span"] >= 8 else ""
            console.print(
                f"[dim]longest span copied from the corpus: {o['longest_span']} words{src}; "
                f"{100 * o['ngram_share']:.0f}% of 8-grams in the corpus"
                + (f"; {r['tries']} tries" if r["tries"] > 1 else "")
                + "[/dim]",
                highlight=False,
            )


@app.command("chat")
@user_errors
def chat_cmd(
    model: Annotated[str, typer.Argument(help="Run dir, model dir, adapter dir, preset or Hub id.")],
    mode: Annotated[
        str, typer.Option("--mode", help="auto, chat (role turns) or continue (co-writing: it carries on your text).")
    ] = "auto",
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", "-n", help="Tokens per reply.")] = None,
    seed: SeedOpt = None,
    base: BaseOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Talk to a model, or co-write with it: it streams each reply; /temp, /topp, /reset, /quit."""
    from shelley.generate import check_generation
    from shelley.generate.chat import ChatSession, check_mode, run_repl
    from shelley.generate.load import load_for_generation

    cfg = _load(
        config,
        sets,
        **{
            "generation.temperature": ("--temperature", temperature),
            "generation.top_p": ("--top-p", top_p),
            "generation.max_new_tokens": ("--max-new-tokens", max_new_tokens),
            "generation.seed": ("--seed", seed),
        },
    )
    check_generation(cfg.generation)
    with err_console.status(f"loading {model}"):
        loaded = load_for_generation(model, base=base, trust_remote_code=cfg.model.trust_remote_code)
    session = ChatSession(loaded.model, loaded.tokenizer, cfg.generation, check_mode(mode, loaded.tokenizer))

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    run_repl(session, read=input, say=lambda m: console.print(m, highlight=False, markup=False), write=write)


def _text_arg(text: str) -> tuple[str, str]:
    """(name, body) of a TEXT argument: a file path, or the text itself in quotes."""
    from shelley.data.ingest import read_text

    path = Path(text)
    is_file = len(text) < 4096 and "\n" not in text and path.is_file()
    body = read_text(path) if is_file else text
    if not body.strip():
        raise ShelleyError(f"the text {path.name if is_file else 'given'} is empty; pass a file with text or the text")
    return (path.name if is_file else f"text {len(body.split())} words"), body


def _corpus_identity(corpus: Path, cfg, rows: list[dict]):
    """The author of --corpus: a run's recorded author, else identified from the corpus file."""
    from shelley.data.books import describe_corpus
    from shelley.generate.load import find_train_run

    source: str | None = str(corpus)
    run = find_train_run(corpus) if corpus.is_dir() else None
    if run is not None:
        from shelley.eval.report import corpus_source, load_run

        cfg = load_run(corpus)[0]
        source = corpus_source(cfg, run)
    elif corpus.is_dir():
        source = _identity_source(corpus, cfg)
    return describe_corpus(cfg, source, [r["text"] for r in rows if r["split"] == "validation"])


@style_app.command("attribute")
@user_errors
def style_attribute(
    texts: Annotated[list[str], typer.Argument(help="Text files (or texts in quotes) to attribute.")],
    corpus: Annotated[Path, typer.Option("--corpus", help="Run dir, dataset dir or corpus file of the author.")],
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Reference set of other authors (default: eval.reference_dir).")
    ] = None,
    bag_words: Annotated[int | None, typer.Option("--bag-words", min=1, help="Words per bag [default 1000].")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Who wrote this? Attribute each text, bag by bag, among the corpus's author and the reference authors."""
    from shelley.eval.attribution import describe, word_count
    from shelley.eval.originality import corpus_rows
    from shelley.eval.voice import build_attribution_test

    cfg = _load(config, sets, **{"eval.bag_words": ("--bag-words", bag_words)})
    named = [_text_arg(t) for t in texts]
    for name, body in named:
        if word_count(body) < cfg.eval.bag_words:
            raise ShelleyError(
                f"{name} has {word_count(body)} words, fewer than one bag of {cfg.eval.bag_words}; "
                "pass a longer text or lower --bag-words"
            )
    rows = corpus_rows(corpus, cfg.data)
    who = _corpus_identity(corpus, cfg, rows)
    test = build_attribution_test(
        who,
        [r["text"] for r in rows if r["split"] == "train"],
        [r["text"] for r in rows if r["split"] == "validation"],
        str(reference) if reference else cfg.eval.reference_dir,
        bag_words=cfg.eval.bag_words,
    )
    results = [{"text": name} | test.attribute(body) for name, body in named]
    if as_json:
        doc = {"author": who.author, "validity": test.validity, "candidates": test.candidates, "texts": results}
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        return
    v = test.validity
    console.print(
        f"validity: {'valid' if v['valid'] else '[red]NOT VALID[/red]'}; {who.author}'s held-out text "
        f"{describe(v['own_held_out'])} to {who.author}; at most {100 * v['impostor_max_share']:.0f}% of another "
        f"author's held-out bags ({v['impostor_max_author']}) to {who.author}",
        highlight=False,
    )
    from rich.table import Table

    names = {c["key"]: c["name"] for c in test.candidates}
    t = Table(title=f"who wrote this? {who.author} among {len(test.candidates)} authors")
    for col in ("text", "bags", f"to {who.author}", "95% interval", "most attributed author"):
        t.add_column(col)
    for r in results:
        top = max(r["shares"], key=r["shares"].get)
        lo, hi = r["interval"]
        t.add_row(
            r["text"],
            str(r["bags"]),
            f"{100 * r['target_share']:.0f}%",
            f"{100 * lo:.0f}–{100 * hi:.0f}%",
            f"{names[top]} {100 * r['shares'][top]:.0f}%",
        )
    console.print(t)


@style_app.command("profile")
@user_errors
def style_cmd(
    text: Annotated[str, typer.Argument(help="A text file, or the text itself in quotes.")],
    corpus: Annotated[Path, typer.Option("--corpus", help="Run dir, dataset dir or corpus file to compare with.")],
    features: Annotated[int, typer.Option("--features", min=2, help="Function words used by Delta.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Stylometry of a text against a corpus: Burrows' Delta, sentence length, punctuation, MATTR, unseen words."""
    from shelley.eval.originality import corpus_rows
    from shelley.eval.style import StyleModel, compare

    cfg = _load(config, sets)
    _name, body = _text_arg(text)
    rows = corpus_rows(corpus, cfg.data, split=False)
    fit_on = [r["text"] for r in rows if r["split"] == "train"] or [r["text"] for r in rows]
    style = StyleModel.fit(fit_on, n_features=features)
    held = [r["text"] for r in rows if r["split"] == "validation"] or fit_on
    table = compare(style, {"text": [body], "corpus_held_out": held}, reference="corpus_held_out")
    if as_json:
        sys.stdout.write(json.dumps({"features": style.features, "groups": table}, indent=2) + "\n")
        return
    from rich.table import Table

    t = Table(title=f"style vs {corpus}")
    for col in ("", "words", "Delta", "sent. len", "; /1k", "— /1k", ", /1k", "MATTR", "unseen"):
        t.add_column(col, justify="right" if col else "left")
    for name, g in table.items():
        pk = g["per_1000_words"]
        t.add_row(
            name,
            str(g["words"]),
            f"{g['delta']:.3f}",
            f"{g['sentence_length_mean']:.1f}",
            f"{pk['semicolon']:.1f}",
            f"{pk['dash']:.1f}",
            f"{pk['comma']:.1f}",
            f"{g['mattr']:.3f}",
            f"{100 * g['unseen_word_share']:.1f}%",
        )
    console.print(t)


@app.command("ab")
@user_errors
def ab_cmd(
    target: Annotated[
        list[str], typer.Argument(help="RUN (write the page), or `score ANSWERS.json` (reveal and tally).")
    ],
    out: Annotated[Path | None, typer.Option("--out", help="The page to write [default RUN/ab.html].")] = None,
    pairs: Annotated[int, typer.Option("--pairs", min=2, help="Pairs on the page.")] = 30,
    words: Annotated[int, typer.Option("--words", min=5, help="Words per passage (both sides equal).")] = 120,
    seed: Annotated[int, typer.Option("--seed", help="Seed that shuffles passages and sides.")] = 0,
    key: Annotated[Path | None, typer.Option("--key", help="With score: the page's key (RUN/ab-key.json).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="With score: print JSON.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Blind A/B page for human readers ("which sounds more like the author?"); `ab score` reveals the answers."""
    from shelley.eval import ab

    if target[0] == "score":
        if len(target) != 2 or key is None:
            raise ShelleyError("usage: shelley ab score ANSWERS.json --key RUN/ab-key.json")
        answers, the_key = _read_json(Path(target[1]), "answers"), _read_json(key, "key")
        tally = ab.score(answers, the_key)
        if as_json:
            sys.stdout.write(json.dumps(tally, indent=2, ensure_ascii=False) + "\n")
            return
        for c in tally["comparisons"].values():
            lo, hi = c["interval"]
            ci = f"95% CI {100 * lo:.0f}–{100 * hi:.0f}%"
            console.print(
                f"{c['label']}: fine-tuned picked {c['finetuned_picked']}/{c['answered']} "
                f"({100 * c['share']:.0f}%, {ci}, two-sided p = {c['p_two_sided']:.2g})",
                highlight=False,
            )
        return
    if len(target) != 1:
        raise ShelleyError("usage: shelley ab RUN [--out ab.html]  or  shelley ab score ANSWERS.json --key KEY")
    from shelley.eval.report import VOICE_TEXTS
    from shelley.io import atomic_write_text, check_output_file, write_json

    run = Path(target[0])
    texts_path = run / VOICE_TEXTS
    if not texts_path.exists():
        raise ShelleyError(f"{run} has no {VOICE_TEXTS}; run `shelley eval {run} --attribution` first")
    page_path = out or run / "ab.html"
    key_path = run / "ab-key.json"
    check_output_file(page_path, overwrite=overwrite)
    check_output_file(key_path, overwrite=overwrite, flag="--overwrite (the key)")
    doc = _read_json(texts_path, "texts")
    title = doc.get("title", "the corpus")
    html, the_key = ab.build_page(doc["texts"], doc["author"], title, pairs=pairs, words=words, seed=seed)
    write_json(key_path, the_key)
    atomic_write_text(page_path, html)
    console.print(f"A/B page with {pairs} pairs: [bold]{page_path}[/bold]; key: {key_path} (keep it from the readers)")
    console.print(f"then: shelley ab score ab-answers.json --key {key_path}", highlight=False)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ShelleyError(f"{what} file not found: {path}; check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ShelleyError(f"{what} file {path} is not valid JSON; download or write it again") from None


def _default_run_config() -> Path:
    """The CPU preset `shelley run` uses when no --config is given (package data: it ships with the wheel)."""
    from shelley.config import DEFAULT_RUN_PRESET, resolve_config

    return resolve_config(DEFAULT_RUN_PRESET)


# ---------------------------------------------------------------------------------------------- config


@config_app.command("show")
@user_errors
def config_show(config: ConfigOpt = None, sets: SetOpt = None) -> None:
    """Print the effective configuration (preset or file + --set) as YAML; with no --config, the preset
    `shelley run` uses by default."""
    import yaml

    if config is None:
        config = _default_run_config()
        err_console.print(f"# no --config: the preset `shelley run` uses by default ({config.stem})", highlight=False)
    cfg = _load(config, sets)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


@config_app.command("presets")
@user_errors
def config_presets() -> None:
    """List the presets that ship with shelley (`--config NAME` takes any of them)."""
    from rich.table import Table

    from shelley.config import presets

    t = Table("preset", "what it is")
    for name, path in sorted(presets().items()):
        lines = [x.lstrip("# ").strip() for x in path.read_text("utf-8").splitlines()[:4] if x.startswith("#")]
        t.add_row(name, next((x for x in lines[1:] if x), ""))
    console.print(t)


@config_app.command("keys")
@user_errors
def config_keys() -> None:
    """List every config key with its default and what it does."""
    from rich.table import Column, Table

    from shelley.config import describe_fields

    t = Table(Column("key", no_wrap=True), "default", "description")
    for key, default, desc in describe_fields():
        t.add_row(key, default, desc)
    console.print(t)


# ----------------------------------------------------------------------------------------- card / push


@app.command("card")
@user_errors
def card_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run dir of `shelley run` or `shelley train` (after eval).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write the card (default RUN_DIR/README.md).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name in the card (default: the run dir's).")] = None,
    space: Annotated[
        str | None, typer.Option("--space-for", help="Write a Space card for this model repo instead.")
    ] = None,
) -> None:
    """Write a Hugging Face model card (or --space-for REPO: a Space card) filled with the run's measurements."""
    from shelley.hub.card import render_space_card, write_model_card
    from shelley.io import atomic_write_text

    if space:
        target = out or run_dir / "SPACE.md"
        atomic_write_text(target, render_space_card(run_dir, model_repo=space))
    else:
        target = write_model_card(run_dir, out, name=name)
    console.print(f"card written to [bold]{target}[/bold]")


@app.command("push")
@user_errors
def push_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run dir of `shelley run` or `shelley train`.")],
    repo: Annotated[str, typer.Argument(help="Hub repo: NAME or OWNER/NAME.")],
    public: Annotated[bool, typer.Option("--public", help="Create the repo public (default: private).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files and sizes; upload nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Push even if the run has no eval.json.")] = False,
) -> None:
    """Upload the model or adapter, tokenizer, model card and eval report (token from HF_TOKEN or hf auth login)."""
    from rich.table import Table

    from shelley.hub.push import push

    files, url = push(run_dir, repo, public=public, dry_run=dry_run, force=force)
    t = Table(
        "file",
        "bytes",
        title=f"{'would upload' if dry_run else 'uploaded'} to {repo} ({'public' if public else 'private'})",
    )
    for path, size in files:
        t.add_row(path, f"{size:,}")
    console.print(t)
    total = sum(size for _, size in files)
    console.print(f"{len(files)} files, {total / 1e6:.1f} MB" + (f"; {url}" if url else " (dry run: nothing sent)"))


@app.command("serve")
@user_errors
def serve_cmd(
    model: Annotated[str, typer.Argument(help="Run dir, model dir, adapter dir, preset or Hub id.")],
    host: Annotated[str, typer.Option("--host", help="Interface to bind (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 7860,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Requests generated at once.")] = 1,
    export_space: Annotated[
        Path | None, typer.Option("--export-space", help="Write a Hugging Face Space folder here instead of serving.")
    ] = None,
    model_repo: Annotated[
        str | None, typer.Option("--model-repo", help="With --export-space: the Hub repo the Space loads.")
    ] = None,
    base: BaseOpt = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """A Gradio demo: prompt, temperature / top-p / max tokens, seed, keep-it-original, streamed output."""
    cfg = _load(config, sets)
    if export_space is not None:
        from shelley.serve.space import export_space as export

        if not model_repo:
            raise ShelleyError("--export-space needs --model-repo OWNER/NAME (push the model there first)")
        with err_console.status("writing the Space (building the shelley wheel)"):
            files = export(
                Path(model),
                export_space,
                model_repo=model_repo,
                gen=cfg.generation,
                max_span=cfg.eval.max_copied_span,
                overwrite=overwrite,
            )
        console.print(f"Space written to [bold]{export_space}[/bold]: {', '.join(f.name for f in files)}")
        return
    from shelley.serve.app import check_port_free, load_demo, serve

    check_port_free(host, port)  # before minutes of model loading
    with err_console.status(f"loading {model}"):
        demo = load_demo(model, cfg.generation, max_span=cfg.eval.max_copied_span, base=base)
    err_console.print(f"serving {model} on http://{host}:{port} (Ctrl+C to stop)")
    serve(demo, host=host, port=port, concurrency=concurrency, title=f"shelley · {Path(model).name}")


# ------------------------------------------------------------------------------------------- tokenizer


@tokenizer_app.command("train")
@user_errors
def tokenizer_train(
    corpus: CorpusArg = None,
    vocab_size: Annotated[
        int, typer.Option("--vocab-size", help="Tokens in the vocabulary (specials included).")
    ] = 4096,
    out: Annotated[Path, typer.Option("--out", help="Directory for tokenizer.json and its config.")] = Path(
        "tokenizers/shelley-bpe"
    ),
    fmt: FormatOpt = None,
    text_column: TextColOpt = None,
    encoding: EncodingOpt = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Train a byte-level BPE on the corpus's train split; report characters per token on its validation split."""
    from shelley.gpt.tokenizer import check_vocab_size, compression, save_tokenizer, train_tokenizer

    check_vocab_size(vocab_size)  # before reading the corpus
    cfg = _load(config, sets, **_data_flags(fmt, text_column, encoding))
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ShelleyError(f"{out} already exists; pass --overwrite or another --out")
    train_texts, val_texts = _training_texts(corpus, cfg)
    with err_console.status(f"training a {vocab_size}-token byte-level BPE on {len(train_texts)} rows"):
        tok = train_tokenizer(train_texts, vocab_size)
    save_tokenizer(tok, out, overwrite=overwrite)
    c = compression(tok, val_texts or train_texts)
    slice_ = "validation" if val_texts else "training"
    console.print(
        f"tokenizer with {len(tok)} tokens saved to [bold]{out}[/bold]; {c['chars_per_token']:.2f} characters per "
        f"token on the {slice_} text ({c['characters']:,} chars -> {c['tokens']:,} tokens)"
    )


# ---------------------------------------------------------------------------------------------- models


@models_app.command("list")
@user_errors
def models_list() -> None:
    """List model presets and whether each is ready offline."""
    from rich.table import Table

    from shelley.models.registry import PRESETS, _find_gguf, cache_dir

    t = Table("preset", "hub id", "default method", "offline", "description")
    for p in PRESETS.values():
        if (cache_dir(p.name) / "config.json").exists():
            offline = "cached"
        elif _find_gguf(p):
            offline = "GGUF (run `models prepare`)"
        else:
            offline = "no (Hub only)"
        t.add_row(p.name, p.hub_id, p.default_method, offline, p.description)
    console.print(t)


@models_app.command("prepare")
@user_errors
def models_prepare(name: Annotated[str, typer.Argument(help="Preset name, e.g. smollm2-135m.")]) -> None:
    """Make a preset ready offline (SmolLM2: dequantize the shipped GGUF once into SHELLEY_HOME)."""
    from shelley.models.registry import resolve

    path = resolve(name)
    console.print(f"{name} ready at [bold]{path}[/bold]")


@models_app.command("import-gguf")
@user_errors
def models_import_gguf(
    file: Annotated[Path, typer.Argument(help="GGUF file to import.")],
    name: Annotated[str, typer.Argument(help="Name to cache it under (then usable as model.name).")],
) -> None:
    """Dequantize any GGUF file into a trainable safetensors checkpoint under SHELLEY_HOME/models/NAME."""
    from shelley.models.registry import import_gguf

    out = import_gguf(file, name)
    console.print(f"imported {file} as [bold]{name}[/bold] at {out}")


def _print_version(value: bool) -> None:
    if value:
        from shelley import __version__

        typer.echo(f"shelley {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """shelley: fine-tune a language model to write in one author's voice."""


def main() -> None:
    try:
        app()
    except ShelleyError as exc:  # anything that escaped a command
        err_console.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
