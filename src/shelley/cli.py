"""The ``shelley`` command line: a table of commands, each a few lines that call the library and print its result.

Options that set config keys are declared from the config fields (``options.key``); the printing lives in
``views``. Library errors (``ShelleyError``) become one red line and exit code 2 here, at the edge. Heavy
libraries (torch, transformers, datasets, matplotlib) are imported inside the commands that need them, so
``shelley --help`` answers instantly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

import shelley.options as o
from shelley import views
from shelley.config import DEFAULT_RUN_PRESET, describe_fields, load_config, preset_summaries, with_window
from shelley.data.books import default_reference_dir, fetch_books, fetch_reference
from shelley.data.build import corpus_path, prepare_splits, save_dataset
from shelley.data.corpus import open_corpus, training_corpus, with_identity
from shelley.data.fetch import fetch_gutenberg
from shelley.data.inspect import inspect_to
from shelley.data.tokens import token_check
from shelley.errors import ShelleyError
from shelley.generate import check_generation, generate_texts
from shelley.generate.load import load_writer
from shelley.gpt.tokenizer import check_vocab_size, train_and_save
from shelley.hub.card import write_model_card, write_space_card
from shelley.hub.push import push, push_dataset
from shelley.io import atomic_write_text, check_output_dir, check_output_file
from shelley.models.registry import PRESETS, import_gguf, load_tokenizer, offline_status, resolve
from shelley.pipeline import run_pipeline
from shelley.run import Run
from shelley.runtime import quiet_libraries

app = typer.Typer(help=o.APP_HELP, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = o.group("Corpus: fetch, inspect, clean and build datasets, check tokenizers.")
fetch_app = o.group("Download corpora (needs internet).")
config_app = o.group("Show the configuration and what every key means.")
models_app = o.group("Base model presets and offline import.")
style_app = o.group("Stylometry: who wrote a text, and how it compares with a corpus.")
tokenizer_app = o.group("Train a byte-level BPE tokenizer for a scratch GPT.")
for sub, name in [(data_app, "data"), (config_app, "config"), (models_app, "models"), (style_app, "style")]:
    app.add_typer(sub, name=name)
app.add_typer(tokenizer_app, name="tokenizer")
data_app.add_typer(fetch_app, name="fetch")


@o.command(data_app, "inspect", groups=(o.DATA_KEYS,))
def data_inspect(
    cfg,
    corpus: o.CorpusArg = None,
    out: o.opt(Path | None, "--out", "-o", help="Report directory (default: reports/<corpus>).") = None,
    tokenizer: o.TokenizerOpt = None,
    overwrite: o.OverwriteOpt = False,
) -> None:
    """EDA of a corpus: counts, lengths, noise, duplicates; writes report.md, stats.json and PNG histograms."""
    source = corpus_path(corpus, cfg.data)
    out = out or Path("reports") / source.stem
    check_output_dir(out, overwrite=overwrite)  # before any work: fail fast, write nothing
    with o.err_console.status("reading corpus") as status:
        stats = inspect_to(
            source, cfg, out, tokenizer=tokenizer, loader=load_tokenizer, overwrite=overwrite, on_stage=status.update
        )
    views.inspect_summary(o.console, stats)
    o.console.print(f"report written to [bold]{out}[/bold] (report.md, stats.json, PNG histograms)")


@o.command(data_app, "build", groups=(o.DATA_KEYS,))
def data_build(
    cfg,
    corpus: o.CorpusArg = None,
    out: o.opt(Path | None, "--out", "-o", help="Dataset directory (default: data.out).") = None,
    seed: o.key("data.seed", "--seed") = None,
    split: o.key("data.split", "--split") = None,
    push_to_hub: o.opt(str | None, "--push-to-hub", help="Also upload to this Hub dataset repo (private).") = None,
    public: o.opt(bool, "--public", help="Create the Hub repo public.") = False,
    dry_run: o.opt(bool, "--dry-run", help="With --push-to-hub: list files, upload nothing.") = False,
    overwrite: o.OverwriteOpt = False,
) -> None:
    """Clean the corpus and save a train/validation DatasetDict (split by chapters, leakage reported)."""
    source = corpus_path(corpus, cfg.data)
    out = out or Path(cfg.data.out)
    check_output_dir(out, overwrite=overwrite)
    with o.err_console.status("reading, cleaning and splitting"):
        splits, report = prepare_splits(source, cfg.data)
    with o.err_console.status("saving dataset"):
        save_dataset(splits, report, out, overwrite=overwrite)
    views.build_summary(o.console, report)
    o.console.print(f"dataset saved to [bold]{out}[/bold] (datasets.load_from_disk); report in build.md")
    if push_to_hub:
        files = push_dataset(out, push_to_hub, private=not public, dry_run=dry_run)
        views.dataset_uploads(o.console, files, push_to_hub, public=public, dry_run=dry_run)


@o.command(data_app, "tokens", groups=(o.DATA_KEYS,))
def data_tokens(
    cfg,
    corpus: o.arg(Path | None, help="Corpus file or a dataset directory from `shelley data build`.") = None,
    tokenizer: o.TokenizerOpt = None,
    max_length: o.key("model.max_length", "--max-length") = None,
    batch_size: o.opt(int, "--batch-size", min=1, help="Batch size for the padding comparison.") = 8,
    as_json: o.JsonOpt = False,
) -> None:
    """Tokenizer sanity check: round trip, tokens per snippet, truncation, padding sides, packing efficiency."""
    texts = open_corpus(corpus_path(corpus, cfg.data), cfg.data, split=False).train  # a dataset dir: its train split
    tok_name = tokenizer or cfg.model.tokenizer or cfg.model.name
    with o.err_console.status(f"loading tokenizer {tok_name}"):
        tok = load_tokenizer(tok_name, trust_remote_code=cfg.model.trust_remote_code)
    result = token_check(texts, tok, max_length=cfg.model.max_length, batch_size=batch_size)
    views.json_or(as_json, result, lambda: views.token_check(o.console, result))


@o.command(fetch_app, "gutenberg")
def data_fetch_gutenberg(
    cfg,
    ebook_ids: o.arg(list[int], help="Project Gutenberg ebook numbers (84: Frankenstein); several: one folder."),
    out: o.opt(
        Path | None, "--out", "-o", help="File to write (default: data/pg<ID>.txt); with several ebooks, a folder."
    ) = None,
    overwrite: o.OverwriteOpt = False,
) -> None:
    """Download Project Gutenberg ebooks as UTF-8 text (headers are stripped later, at ingest). Several ebooks go
    into one folder with a MANIFEST.json: an author's works, for `shelley run FOLDER`."""
    if len(ebook_ids) == 1:
        name = f"pg{ebook_ids[0]}.txt"
        out = (out / name if out.is_dir() else out) if out is not None else Path("data") / name
        with o.err_console.status(f"downloading ebook {ebook_ids[0]}"):
            fetch_gutenberg(ebook_ids[0], out, overwrite=overwrite)
        o.console.print(f"saved ebook {ebook_ids[0]} to [bold]{out}[/bold]; next: shelley data inspect {out}")
        return
    out = out or Path("data") / "books"
    with o.err_console.status("downloading") as status:
        manifest = fetch_books(ebook_ids, out, overwrite=overwrite, on_book=lambda i: status.update(f"ebook {i}"))
    for m in manifest:
        o.console.print(f"{m['file']}: {m['title']} by {m['author'] or 'an unnamed author'} ({m['words']:,} words)")
    o.console.print(f"saved {len(manifest)} ebooks to [bold]{out}[/bold] (MANIFEST.json); next: shelley run {out}")


@o.command(fetch_app, "reference")
def data_fetch_reference(
    cfg,
    out: o.opt(Path | None, "--out", "-o", help="Folder to write (default: eval.reference_dir).") = None,
    overwrite: o.OverwriteOpt = False,
) -> None:
    """Download the reference set for attribution: twelve period novels by other authors, from Project Gutenberg."""
    out = out or Path(cfg.eval.reference_dir or default_reference_dir())
    with o.err_console.status("downloading") as status:
        fetch_reference(out, overwrite=overwrite, on_book=lambda b: status.update(f"downloading {b.title}"))
    o.console.print(f"reference set saved to [bold]{out}[/bold] (MANIFEST.json and 12 books)")


@o.command(app, "train")
def train_cmd(
    cfg,
    dataset: Annotated[
        Path | None,
        typer.Argument(help="Dataset dir from `shelley data build`, or a corpus file (default: data.source)."),
    ] = None,
    run_dir: o.key("train.run_dir", "--run-dir", type_=Path) = None,
    method: o.key("train.method", "--method") = None,
    model: o.key("model.name", "--model") = None,
    resume: o.opt(bool, "--resume", help="Continue from the run dir's last checkpoint.") = False,
    merge: o.key("train.merge", "--merge") = None,
    window: o.WindowOpt = None,
    overwrite: o.OverwriteOpt = False,
) -> None:
    """Fine-tune (full / LoRA / QLoRA) on one accelerate loop; `accelerate launch` scales it out."""
    from shelley.finetune.loop import train

    cfg = with_window(cfg, window) if window else cfg

    corpus = training_corpus(dataset, cfg.data, on_note=o.tell)
    cfg, _ = with_identity(cfg, corpus)  # the run's config.yaml records the corpus's author, title and prompts
    result = train(
        cfg, corpus.train, corpus.validation, Path(cfg.train.run_dir), resume=resume, overwrite=overwrite,
        sampler=generate_texts,
    )  # fmt: skip
    views.train_result(o.console, result)


@o.command(app, "eval", config=False)
def eval_cmd(
    run_dir: o.arg(Path, help="Run directory of `shelley train`."),
    prompts: o.opt(str | None, "--prompts", help="Prompt set: prose (the corpus's own), math, code, or a file.") = None,
    attribution: o.opt(bool, "--attribution", help="Who-wrote-this test: base vs fine-tuned vs the author.") = False,
    bags: o.key("eval.attribution_bags", "--bags", min=1) = None,
    reference: o.ReferenceOpt = None,
    bag_words: o.key("eval.bag_words", "--bag-words", min=1) = None,
    keep_names: o.opt(bool, "--keep-names", help="Keep names among the attribution's features.") = False,
    scenes: o.opt(
        int | None, "--scenes", min=1, help="Also write this many whole scenes per model and judge them."
    ) = None,
    words: o.opt(int, "--words", help="With --scenes: words per scene (100-3,000).") = 1000,
    engine: o.opt(
        str, "--engine", help="With --scenes: transformers, or llamacpp (exports both models to GGUF once)."
    ) = "transformers",
    quant: o.opt(
        str, "--quant", help="With --engine llamacpp: the export the scenes are written from, f16 or q8_0."
    ) = "f16",
    heldout_book: o.opt(
        list[Path] | None, "--heldout-book", help="A book by the author the run never saw: loss by context position."
    ) = None,
) -> None:
    """Base vs trained perplexity on the same validation tokens, side-by-side generations -> eval.md/json/html.
    With --scenes: whole scenes (loops, repeats, copies, name churn, who wrote them) and the context curve."""
    from shelley.eval.evaluate import evaluate_run
    from shelley.eval.prompts import load_prompts
    from shelley.eval.report import keep_earlier, write_eval

    run = Run.open(run_dir)
    for book in heldout_book or []:
        if not book.is_file():
            raise ShelleyError(f"--heldout-book {book}: no such file; pass a book file by the corpus's author")
    scene_engine = None
    if scenes:
        from shelley.generate.scene import check_scene_request

        check_scene_request(words, [])
        if engine not in ("transformers", "llamacpp"):
            raise ShelleyError(f"unknown engine {engine!r}; use transformers or llamacpp")
        if engine == "llamacpp":
            from shelley.export import scene_engines

            scene_engine = scene_engines(run, quant=quant, on_note=o.note)
    prompt_set = load_prompts(prompts) if prompts is not None else None
    n_bags = (bags or run.config().eval.attribution_bags) if attribution else None
    progress, on_progress = o.attribution_progress()
    with o.err_console.status("evaluating base and trained models"), progress:
        results, texts = evaluate_run(
            run, prompt_set, attribution_bags=n_bags, reference_dir=str(reference) if reference else None,
            bag_words=bag_words, keep_names=keep_names, scenes=scenes, scene_words=words, scene_engine=scene_engine,
            heldout_books=heldout_book, on_progress=on_progress,
        )  # fmt: skip
    results = write_eval(run, keep_earlier(run, results), texts)
    views.eval_result(o.console, results, str(run.eval_md))


@o.command(app, "run", default_config=DEFAULT_RUN_PRESET)
def run_cmd(
    cfg,
    corpus: o.CorpusArg = None,
    run_dir: o.opt(Path, "--run-dir", help="Where data, training and reports go.") = Path("runs/run"),
    time_budget: o.opt(float, "--time-budget", min=1, help="Wall-clock seconds for the whole job.") = 600,
    method: o.key("train.method", "--method") = None,
    model: o.key("model.name", "--model") = None,
    keep_checkpoints: o.opt(bool, "--keep-checkpoints", help="Keep the optimizer state at the end.") = False,
    window: o.WindowOpt = None,
    overwrite: o.OverwriteOpt = False,
) -> None:
    """The main job: corpus -> clean -> split -> fine-tune -> eval -> report, within --time-budget (default
    preset: smollm2-135m_full_cpu)."""
    cfg = with_window(cfg, window) if window else cfg
    source = corpus_path(corpus, cfg.data)
    progress, on_progress = o.attribution_progress()
    with progress:
        results = run_pipeline(
            cfg, source, run_dir, time_budget_s=time_budget, overwrite=overwrite, keep_checkpoints=keep_checkpoints,
            on_progress=on_progress,
        )  # fmt: skip
    views.eval_result(o.console, results, str(run_dir / "eval.md"))


@o.command(app, "write", groups=(o.SAMPLING_KEYS,))
def write_cmd(
    cfg,
    model: o.ModelArg,
    prompts: o.arg(list[str] | None, help="Prompts to continue (several are batched; none: unconditional).") = None,
    min_new_tokens: o.key("generation.min_new_tokens", "--min-new-tokens") = None,
    num_samples: o.key("generation.num_samples", "--samples") = None,
    do_sample: o.key("generation.do_sample", "--sample/--greedy") = None,
    top_k: o.key("generation.top_k", "--top-k") = None,
    repetition_penalty: o.key("generation.repetition_penalty", "--repetition-penalty") = None,
    no_repeat_ngram: o.key("generation.no_repeat_ngram_size", "--no-repeat-ngram") = None,
    stop: o.key("generation.stop", "--stop") = None,
    original: o.opt(bool, "--original", help="Re-sample any output that copies too long a span of the corpus.") = False,
    max_span: o.key("eval.max_copied_span", "--max-span") = None,
    tries: o.opt(int, "--tries", min=1, help="Samples drawn at most per output with --original.") = 5,
    corpus: o.opt(Path | None, "--corpus", help="Corpus for the originality check (default: the run's).") = None,
    index: o.opt(Path | None, "--index", help="A saved originality index (.npz).") = None,
    base: o.BaseOpt = None,
    engine: o.EngineOpt = "transformers",
    int8: o.Int8Opt = False,
    gguf: o.GgufOpt = None,
    words: o.opt(int | None, "--words", help="Write a whole scene of about this many words (100-3,000).") = None,
    beats: o.opt(Path | None, "--beats", help="With --words: a file of beats, one sentence per line, in order.") = None,
    context: o.opt(int | None, "--context", help="With --words: tokens of rolling context (default 1024).") = None,
    out: o.opt(Path | None, "--out", help="With --words: also save the scene to this text file.") = None,
    as_json: o.JsonOpt = False,
) -> None:
    """Continue prompts in the author's voice; reports (and with --original avoids) copying from the corpus.
    With --words: a whole scene, streamed paragraph by paragraph."""
    from shelley.eval.originality import index_for
    from shelley.generate.write import write

    prompts = list(prompts or [""])
    check_generation(cfg.generation)  # before loading any model
    scene = _scene_request(words, beats, out, prompts, cfg.generation.num_samples) if words is not None else None
    with o.err_console.status(f"loading {model}"):
        loaded, fast = load_writer(
            model, engine, gguf, base=base, trust_remote_code=cfg.model.trust_remote_code, int8=int8
        )
    want_index = original or corpus is not None or index is not None or loaded.run is not None
    idx = index_for(loaded.run, corpus, index, cfg.data) if want_index else None
    if scene is not None:
        return _write_scene(cfg, loaded, fast, prompts[0], scene, idx, original, tries, context, out, as_json)
    stream = len(prompts) * cfg.generation.num_samples == 1 and not as_json and not original
    streamer = views.streamer(o.console, loaded.tokenizer, prompts[0], raw=fast is not None) if stream else None
    results = write(
        loaded.model, loaded.tokenizer, prompts, cfg.generation, index=idx, original=original,
        max_span=cfg.eval.max_copied_span, tries=tries, on_note=o.note, streamer=streamer, engine=fast,
    )  # fmt: skip
    doc = {"model": loaded.source, "generation": cfg.generation.model_dump(mode="json"), "samples": results}
    views.json_or(as_json, doc, lambda: views.written(o.console, results, streamed=streamer is not None))


def _scene_request(words: int, beats: Path | None, out: Path | None, prompts: list[str], samples: int) -> dict:
    """Check a scene request before any model loads: the words, the beats file, the output file."""
    from shelley.generate.scene import check_scene_request, read_beats

    if len(prompts) > 1 or samples > 1:
        raise ShelleyError("--words writes one scene: pass one prompt and no --samples")
    beat_list = read_beats(beats) if beats is not None else []
    check_scene_request(words, beat_list)
    if out is not None:
        check_output_file(out, overwrite=True)
    return {"words": words, "beats": beat_list}


def _write_scene(cfg, loaded, fast, prompt, request, idx, original, tries, context, out, as_json) -> None:
    from shelley.generate.scene import paragraph_break_for, scene_engine, write_scene

    show, progress, on_progress = views.scene_stream(o.console, o.err_console, prompt, request["words"], quiet=as_json)
    with progress:
        scene = write_scene(
            scene_engine(loaded, fast, cfg.generation), loaded.tokenizer, prompt, request["words"],
            beats=request["beats"], index=idx, original=original, max_span=cfg.eval.max_copied_span, tries=tries,
            context_tokens=context, seed=cfg.generation.seed, paragraph_break=paragraph_break_for(loaded.run),
            on_paragraph=show, on_progress=on_progress, on_note=o.note,
        )  # fmt: skip
    if out is not None:
        atomic_write_text(out, (prompt + " " if prompt else "") + scene.text + "\n")
    doc = {"model": loaded.source, "generation": cfg.generation.model_dump(mode="json"), "scene": scene.to_json()}
    views.json_or(as_json, doc, lambda: views.scene_summary(o.console, scene, out))
    if scene.interrupted:
        raise typer.Exit(130)


@o.command(app, "chat", groups=(o.SAMPLING_KEYS,))
def chat_cmd(
    cfg,
    model: o.ModelArg,
    mode: o.opt(str, "--mode", help="auto, chat (role turns) or continue (it carries on your text).") = "auto",
    base: o.BaseOpt = None,
    engine: o.EngineOpt = "transformers",
    int8: o.Int8Opt = False,
    gguf: o.GgufOpt = None,
) -> None:
    """Talk to a model, or co-write with it: it streams each reply; /temp, /topp, /reset, /quit."""
    from shelley.generate.chat import ChatSession, check_mode, run_repl

    check_generation(cfg.generation)
    with o.err_console.status(f"loading {model}"):
        loaded, fast = load_writer(
            model, engine, gguf, base=base, trust_remote_code=cfg.model.trust_remote_code, int8=int8
        )
    mode = check_mode(mode, loaded.tokenizer)
    from shelley.generate.scene import paragraph_break_for

    session = ChatSession(
        loaded.model,
        loaded.tokenizer,
        cfg.generation,
        mode,
        engine=fast,
        paragraph_break=paragraph_break_for(loaded.run),
    )
    run_repl(session, read=input, say=views.say(o.console), write=views.write_raw)


@o.command(style_app, "attribute")
def style_attribute(
    cfg,
    texts: o.arg(list[str], help="Text files (or texts in quotes) to attribute."),
    corpus: o.opt(Path, "--corpus", help="Run dir, dataset dir or corpus file of the author."),
    reference: o.ReferenceOpt = None,
    bag_words: o.key("eval.bag_words", "--bag-words", min=1) = None,
    keep_names: o.key("eval.keep_names", "--keep-names/--no-names") = None,
    curve: o.opt(bool, "--curve", help="Also the share against bag size (500-5,000 words) -> --plot PNG.") = False,
    plot: o.opt(Path, "--plot", help="With --curve: where the PNG goes.") = Path("bag-size-curve.png"),
    as_json: o.JsonOpt = False,
) -> None:
    """Who wrote this? Attribute each text, bag by bag, among the corpus's author and the reference authors."""
    from shelley.eval.voice import attribute_texts, texts_curve

    who, test, results = attribute_texts(texts, corpus, cfg, str(reference) if reference else None)
    if curve:
        rows = texts_curve(texts, corpus, cfg, str(reference) if reference else None, plot)
        o.tell(f"bag-size curve: {', '.join(str(r['bag_words']) for r in rows)} words per bag; plot in {plot}")
        results = [r | {"curve": [c["texts"].get(r["text"]) for c in rows]} for r in results]
    doc = {"author": who.author, "reference": test.reference, "names_left_out": test.names_left_out,
           "validity": test.validity, "verification_validity": test.verifier.validity,
           "candidates": test.candidates, "dropped": test.dropped, "texts": results}  # fmt: skip
    views.json_or(as_json, doc, lambda: views.who_wrote(o.console, who.author, test, results))


@o.command(style_app, "profile")
def style_cmd(
    cfg,
    text: o.arg(str, help="A text file, or the text itself in quotes."),
    corpus: o.opt(Path, "--corpus", help="Run dir, dataset dir or corpus file to compare with."),
    features: o.opt(int, "--features", min=2, help="Function words used by Delta.") = 50,
    as_json: o.JsonOpt = False,
) -> None:
    """Stylometry of a text against a corpus: Burrows' Delta, sentence length, punctuation, MATTR, unseen words."""
    from shelley.eval.style import profile

    features, table = profile(text, corpus, cfg.data, features)
    doc = {"features": features, "groups": table}
    views.json_or(as_json, doc, lambda: views.style_table(o.console, f"style vs {corpus}", table))


@o.command(app, "ab", config=False)
def ab_cmd(
    target: o.arg(list[str], help="RUN (write the page), or `score ANSWERS.json` (reveal and tally)."),
    out: o.opt(Path | None, "--out", help="The page to write (default: RUN/ab.html).") = None,
    pairs: o.opt(int, "--pairs", min=2, help="Pairs on the page.") = 30,
    words: o.opt(int, "--words", min=5, help="Words per passage (both sides equal).") = 120,
    seed: o.opt(int, "--seed", help="Seed that shuffles passages and sides.") = 0,
    key_file: o.opt(Path | None, "--key", help="With score: the page's key (RUN/ab-key.json).") = None,
    scenes: o.opt(bool, "--scenes", help="Whole scenes vs the author's own passages (from `eval --scenes`).") = False,
    as_json: o.opt(bool, "--json", help="With score: print JSON.") = False,
    overwrite: o.OverwriteOpt = False,
) -> None:
    """Blind A/B page for human readers ("which sounds more like the author?"); `ab score` reveals the answers."""
    from shelley.eval import ab

    if target[0] == "score":
        if len(target) != 2 or key_file is None:
            raise ShelleyError("usage: shelley ab score ANSWERS.json --key RUN/ab-key.json")
        tally = ab.score(ab.read_json(target[1], "answers"), ab.read_json(key_file, "key"))
        return views.json_or(as_json, tally, lambda: views.ab_tally(o.console, tally))
    if len(target) != 1:
        raise ShelleyError("usage: shelley ab RUN [--out ab.html]  or  shelley ab score ANSWERS.json --key KEY")
    if scenes:
        page, the_key = ab.write_scene_page(Run.at(target[0]), out, seed=seed, overwrite=overwrite)
        o.console.print(f"A/B page of whole scenes: [bold]{page}[/bold]; key: {the_key} (keep it from the readers)")
    else:
        page, the_key = ab.write_page(Run.at(target[0]), out, pairs=pairs, words=words, seed=seed, overwrite=overwrite)
        o.console.print(f"A/B page with {pairs} pairs: [bold]{page}[/bold]; key: {the_key} (keep it from the readers)")
    o.console.print(f"then: shelley ab score ab-answers.json --key {the_key}", highlight=False)


@config_app.command("show")
@o.user_errors
def config_show(config: o.ConfigOpt = None, sets: o.SetOpt = None) -> None:
    """Print the effective configuration (preset or file + --set) as YAML; with no --config, the preset
    `shelley run` uses by default."""
    import yaml

    if config is None:
        o.tell(f"# no --config: the preset `shelley run` uses by default ({DEFAULT_RUN_PRESET})")
    cfg = load_config(config or DEFAULT_RUN_PRESET, sets or [])
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


@o.command(config_app, "presets", config=False)
def config_presets() -> None:
    """List the presets that ship with shelley (`--config NAME` takes any of them)."""
    views.rows(o.console, ["preset", "what it is"], [list(x) for x in preset_summaries().items()])


@o.command(config_app, "keys", config=False)
def config_keys() -> None:
    """List every config key with its default and what it does."""
    views.rows(o.console, ["key", "default", "description"], [list(x) for x in describe_fields()], no_wrap_first=True)


@o.command(app, "card", config=False)
def card_cmd(
    run_dir: o.RunArg,
    out: o.opt(Path | None, "--out", help="Where to write the card (default RUN_DIR/README.md).") = None,
    name: o.opt(str | None, "--name", help="Model name in the card (default: the run dir's).") = None,
    space: o.opt(str | None, "--space-for", help="Write a Space card for this model repo instead.") = None,
) -> None:
    """Write a Hugging Face model card (or --space-for REPO: a Space card) filled with the run's measurements."""
    run = Run.open(run_dir)
    target = write_space_card(run, out, model_repo=space) if space else write_model_card(run, out, name=name)
    o.console.print(f"card written to [bold]{target}[/bold]")


@o.command(app, "push", config=False)
def push_cmd(
    run_dir: o.RunArg,
    repo: o.arg(str, help="Hub repo: NAME or OWNER/NAME."),
    public: o.opt(bool, "--public", help="Create the repo public (default: private).") = False,
    dry_run: o.opt(bool, "--dry-run", help="List the files and sizes; upload nothing.") = False,
    force: o.opt(bool, "--force", help="Push even if the run has no eval.json.") = False,
) -> None:
    """Upload the model or adapter, tokenizer, model card and eval report (token from HF_TOKEN or hf auth login)."""
    files, url = push(Run.open(run_dir), repo, public=public, dry_run=dry_run, force=force)
    views.uploads(o.console, files, repo, public=public, url=url)


@o.command(app, "export", config=False)
def export_cmd(
    run_dir: o.RunArg,
    fmt: o.opt(str, "--format", help="gguf (one file), ollama (+ Modelfile) or lmstudio (its folder tree).") = "gguf",
    quant: o.opt(str, "--quant", help="f16, q8_0 or q4_k_m (q4_k_m needs llama-cpp-python).") = "f16",
    out: o.opt(Path | None, "--out", help="File (gguf) or folder to write (default: RUN/export/).") = None,
    overwrite: o.OverwriteOpt = False,
) -> None:
    """Export the model for llama.cpp, Ollama or LM Studio (a LoRA adapter is merged first)."""
    from shelley.export import export_run

    with o.err_console.status(f"writing {fmt} ({quant})"):
        path = export_run(Run.open(run_dir), fmt, quant=quant, out=out, overwrite=overwrite)
    views.exported(o.console, path, fmt)


@o.command(app, "serve")
def serve_cmd(
    cfg,
    model: o.ModelArg,
    host: o.opt(str, "--host", help="Interface to bind (default: this machine only).") = "127.0.0.1",
    port: o.opt(int, "--port", min=1, max=65535, help="Port to listen on.") = 7860,
    concurrency: o.opt(
        int, "--concurrency", min=1, help="Rows per batch: readers written at once (default 64)."
    ) = None,
    export_space: o.opt(Path | None, "--export-space", help="Write a Hugging Face Space folder here instead.") = None,
    model_repo: o.opt(str | None, "--model-repo", help="With --export-space: the Hub repo the Space loads.") = None,
    base: o.BaseOpt = None,
    engine: o.EngineOpt = "transformers",
    int8: o.Int8Opt = False,
    gguf: o.GgufOpt = None,
    overwrite: o.OverwriteOpt = False,
) -> None:
    """A Gradio demo: prompt, temperature / top-p / max tokens, seed, keep-it-original, streamed output."""
    if export_space is not None:
        from shelley.serve.space import export_space as export

        with o.err_console.status("writing the Space (building the shelley wheel)"):
            files = export(
                Run.open(model), export_space, model_repo=model_repo, gen=cfg.generation,
                max_span=cfg.eval.max_copied_span, overwrite=overwrite,
            )  # fmt: skip
        o.console.print(f"Space written to [bold]{export_space}[/bold]: {', '.join(f.name for f in files)}")
        return
    from shelley.serve.app import check_port_free, load_demo, serve

    check_port_free(host, port)  # before minutes of model loading
    with o.err_console.status(f"loading {model}"):
        demo = load_demo(
            model, cfg.generation, max_span=cfg.eval.max_copied_span, base=base, engine=engine, gguf=gguf,
            batch=concurrency or 64, int8=int8,
        )  # fmt: skip
    o.err_console.print(f"serving {model} on http://{host}:{port} (Ctrl+C to stop)")
    serve(demo, host=host, port=port, concurrency=concurrency or 1, title=f"shelley · {Path(model).name}")


@o.command(tokenizer_app, "train", groups=(o.DATA_KEYS,))
def tokenizer_train(
    cfg,
    corpus: o.CorpusArg = None,
    vocab_size: o.opt(int, "--vocab-size", help="Tokens in the vocabulary (specials included).") = 4096,
    out: o.opt(Path, "--out", help="Directory for tokenizer.json and its config.") = Path("tokenizers/shelley-bpe"),
    overwrite: o.OverwriteOpt = False,
) -> None:
    """Train a byte-level BPE on the corpus's train split; report characters per token on its validation split."""
    check_vocab_size(vocab_size)  # before reading the corpus
    found = training_corpus(corpus_path(corpus, cfg.data) if corpus else None, cfg.data, on_note=o.tell)
    train_texts, val_texts = found.train, found.validation
    with o.err_console.status(f"training a {vocab_size}-token byte-level BPE on {len(train_texts)} rows"):
        tok, c = train_and_save(train_texts, val_texts, vocab_size, out, overwrite=overwrite)
    o.console.print(
        f"tokenizer with {len(tok)} tokens saved to [bold]{out}[/bold]; {c['chars_per_token']:.2f} characters per "
        f"token on the {c['on']} text ({c['characters']:,} chars -> {c['tokens']:,} tokens)"
    )


@o.command(models_app, "list", config=False)
def models_list() -> None:
    """List model presets and whether each is ready offline."""
    body = [[p.name, p.hub_id, p.default_method, offline_status(p), p.description] for p in PRESETS.values()]
    views.rows(o.console, ["preset", "hub id", "default method", "offline", "description"], body)


@o.command(models_app, "prepare", config=False)
def models_prepare(name: o.arg(str, help="Preset name, e.g. smollm2-135m.")) -> None:
    """Make a preset ready offline (SmolLM2: dequantize the shipped GGUF once into SHELLEY_HOME)."""
    o.console.print(f"{name} ready at [bold]{resolve(name)}[/bold]")


@o.command(models_app, "import-gguf", config=False)
def models_import_gguf(
    file: o.arg(Path, help="GGUF file to import."),
    name: o.arg(str, help="Name to cache it under (then usable as model.name)."),
) -> None:
    """Dequantize any GGUF file into a trainable safetensors checkpoint under SHELLEY_HOME/models/NAME."""
    o.console.print(f"imported {file} as [bold]{name}[/bold] at {import_gguf(file, name)}")


@app.callback()
def _root(version: o.VersionOpt = False, verbose: o.VerboseOpt = False) -> None:
    """shelley: fine-tune a language model to write in one author's voice."""
    quiet_libraries(verbose)


def main() -> None:
    try:
        app()
    except ShelleyError as exc:  # anything that escaped a command
        o.err_console.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
