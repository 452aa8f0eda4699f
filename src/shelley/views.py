"""What the commands print: results turned into rich tables and lines for the terminal.

The library returns records and dicts; these functions only lay them out. The CLI picks which to call.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from shelley.records import EvalResult


def inspect_summary(console: Console, stats: dict[str, Any]) -> None:
    t = Table(title="corpus", show_header=False)
    t.add_row("format", stats["format"])
    t.add_row("rows", f"{stats['rows']:,} ({stats['rows_after_cleaning']:,} after cleaning)")
    t.add_row("characters / words", f"{stats['characters']['total']:,} / {stats['words']['total']:,}")
    if "tokens" in stats:
        tk = stats["tokens"]
        t.add_row("tokens", f"{tk['total']:,} (mean {tk['mean']}, max {tk['max']})")
    t.add_row("noise rows", str(stats["noise_rows"]["count"]))
    t.add_row("exact duplicates", str(stats["exact_duplicates"]))
    t.add_row("non-ASCII chars", " ".join(c["char"] for c in stats["non_ascii"][:20]) or "none")
    t.add_row("chapters/letters", str(stats["sections"]["count"]))
    console.print(t)


def build_summary(console: Console, report: dict[str, Any]) -> None:
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


def token_check(console: Console, r: dict[str, Any]) -> None:
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
            f"[red]round trip changed row {f['row']}:[/red] {f['text']!r} -> {f['decoded']!r}", highlight=False
        )
    console.print("left-padded generation batch (attention masks):", r["left_padding_demo"], highlight=False)
    console.print(r["padding_note"])


def eval_result(console: Console, r: EvalResult, report: str) -> None:
    """The headline of an evaluation: perplexity base -> fine-tuned, the baselines, the attribution verdict."""
    p, lb = r.perplexity, r.labels
    took = f" in {r.wall_seconds:.0f} s" if r.wall_seconds is not None else ""
    console.print(
        f"validation perplexity: {lb['base']} {p.base.perplexity:.2f} -> {lb['finetuned']} "
        f"{p.finetuned.perplexity:.2f} (x{p.ratio:.3f}){took}; report in [bold]{report}[/bold]"
    )
    if r.unigram:
        u = r.unigram
        console.print(
            f"loss {p.finetuned.nll:.3f} nats/token vs unigram entropy {u['entropy']:.3f} "
            f"(train-fitted unigram {u['cross_entropy']:.3f})"
        )
    attribution(console, r)
    for b in r.heldout_books or []:
        verdict = (
            "below the base at every position"
            if b["better_everywhere"]
            else (f"not below the base at positions {', '.join(b['worse_bands'])}")
        )
        console.print(
            f"unseen book {b['title']}: {lb['base']} {b['bands']['base']['all']:.3f} -> {lb['finetuned']} "
            f"{b['bands']['finetuned']['all']:.3f} nats/token; {verdict}",
            highlight=False,
            markup=False,
        )


def attribution(console: Console, r: EvalResult) -> None:
    from shelley.eval.voice import summary_lines

    if r.attribution:
        for line in summary_lines(r.attribution.model_dump(), r.labels):
            console.print(line, highlight=False, markup=False)
    elif r.attribution_skipped:
        console.print(f"attribution skipped: {r.attribution_skipped}", highlight=False, markup=False)


def written(console: Console, results: list[dict[str, Any]], *, streamed: bool) -> None:
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


def who_wrote(console: Console, author: str, test, results: list[dict[str, Any]]) -> None:
    """The validity line and one row per attributed text."""
    from shelley.eval.attribution import describe

    v = test.validity
    console.print(
        f"validity: {'valid' if v['valid'] else '[red]NOT VALID[/red]'}; {author}'s held-out text "
        f"{describe(v['own_held_out'])} to {author}; at most {100 * v['impostor_max_share']:.0f}% of another "
        f"author's held-out bags ({v['impostor_max_author']}) to {author}",
        highlight=False,
    )
    names = {c["key"]: c["name"] for c in test.candidates}
    t = Table(title=f"who wrote this? {author} among {len(test.candidates)} authors")
    for col in ("text", "bags", f"to {author}", "95% interval", "most attributed author"):
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


def style_table(console: Console, title: str, table: dict[str, Any]) -> None:
    t = Table(title=title)
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


def ab_tally(console: Console, tally: dict[str, Any]) -> None:
    for c in tally["comparisons"].values():
        lo, hi = c["interval"]
        console.print(
            f"{c['label']}: fine-tuned picked {c['finetuned_picked']}/{c['answered']} "
            f"({100 * c['share']:.0f}%, 95% CI {100 * lo:.0f}–{100 * hi:.0f}%, two-sided p = {c['p_two_sided']:.2g})",
            highlight=False,
        )


def uploads(console: Console, files: list[tuple[str, int]], repo: str, *, public: bool, url: str | None) -> None:
    t = Table(
        "file",
        "bytes",
        title=f"{'uploaded' if url else 'would upload'} to {repo} ({'public' if public else 'private'})",
    )
    for path, size in files:
        t.add_row(path, f"{size:,}")
    console.print(t)
    total = sum(size for _, size in files)
    console.print(f"{len(files)} files, {total / 1e6:.1f} MB" + (f"; {url}" if url else " (dry run: nothing sent)"))


def rows(console: Console, header: list[str], body: list[list[str]], *, no_wrap_first: bool = False) -> None:
    from rich.table import Column

    cols = [Column(header[0], no_wrap=no_wrap_first), *header[1:]]
    t = Table(*cols)
    for r in body:
        t.add_row(*r)
    console.print(t)


def train_result(console: Console, result) -> None:
    last = result.evals[-1] if result.evals else {}
    console.print(
        f"trained {result.steps} steps in {result.train_seconds:.0f} s ({result.tokens_per_second:.0f} tokens/s); "
        f"validation perplexity {last.get('val_perplexity', float('nan')):.2f}; "
        f"outputs in [bold]{result.output_dir}[/bold]"
    )


def streamer(console: Console, tokenizer, prompt: str, *, raw: bool = False):
    """Print the prompt, then (the streamer returned) the one sample token by token as it is generated: a
    transformers ``TextStreamer``, or (``raw``: llama.cpp) a callback for the text pieces."""
    console.print(prompt, end="", highlight=False)
    if raw:
        return write_raw
    from transformers import TextStreamer

    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def scene_stream(console: Console, err_console: Console, prompt: str, words: int, *, quiet: bool = False):
    """(on_paragraph, progress, on_progress) for a scene: each paragraph printed as it is finished (the
    first after the prompt), and a progress line on stderr with words written and tokens per second."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("scene"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} words · {task.fields[rate]:.1f} tokens/s"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=quiet,
    )
    task = progress.add_task("scene", total=words, rate=0.0)
    first = [True]

    def show(paragraph: str) -> None:
        if quiet:
            return
        text = (prompt + " " + paragraph if prompt else paragraph) if first[0] else "\n" + paragraph
        first[0] = False
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    def on_progress(p: dict) -> None:
        progress.update(task, completed=min(p["words"], words), rate=p["tokens_per_s"])

    return show, progress, on_progress


def scene_summary(console: Console, scene, out) -> None:
    """One dim line of figures under a streamed scene: length, speed, the guard."""
    g = scene.guard
    parts = [
        f"{scene.words} words in {len(scene.paragraphs)} paragraphs",
        f"{scene.seconds:.1f} s ({scene.drawn_tokens / max(scene.seconds, 1e-9):.1f} tokens/s, "
        f"first paragraph after {scene.first_paragraph_s:.1f} s)",
    ]
    if "longest_span" in g:
        parts.append(f"longest span copied from the corpus: {g['longest_span']} words")
    if g.get("on"):
        parts.append(
            f"guard re-sampled {g['resampled']} time(s)" + (f", gave up {len(g['gave_up'])}" if g["gave_up"] else "")
        )
    if scene.interrupted:
        parts.append("interrupted: kept what was written")
    if out is not None:
        parts.append(f"saved to {out}")
    console.print("[dim]" + "; ".join(parts) + "[/dim]", highlight=False)


def dataset_uploads(console: Console, files: list[tuple[str, int]], repo: str, *, public: bool, dry_run: bool) -> None:
    verb = "would upload" if dry_run else "uploaded"
    console.print(f"{verb} {len(files)} files to {repo} ({'public' if public else 'private'}):")
    for name, size in files:
        console.print(f"  {name}  {size:,} bytes", highlight=False)


def exported(console: Console, path, fmt: str) -> None:
    """Where the export went and the command that runs it."""
    console.print(f"wrote [bold]{path}[/bold]")
    if fmt == "gguf":
        console.print(f'run it: llama-cli -m {path} -p "It was a dreary night"', highlight=False, markup=False)
    elif fmt == "ollama":
        console.print(f"run it: cd {path} && ollama create {path.parent.parent.name} -f Modelfile", highlight=False)
    else:
        console.print(f"run it: copy {path}/shelley into LM Studio's models folder, or `lms import` the .gguf in it")


def write_raw(text: str) -> None:
    """Text as it streams (a chat reply), unstyled and flushed at once."""
    import sys

    sys.stdout.write(text)
    sys.stdout.flush()


def json_or(as_json: bool, doc: Any, show) -> None:
    """``doc`` as JSON on stdout (--json: for scripts), or ``show()`` to print it for people."""
    if as_json:
        import json
        import sys

        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        show()


def say(console: Console):
    """A callback that prints a plain line (no markup, no highlighting)."""
    return lambda message: console.print(message, highlight=False, markup=False)
