"""EDA of a corpus: counts, lengths in characters and tokens, noise, duplicates, odd characters.

``inspect_corpus`` computes the numbers (pure); ``write_inspect_report`` turns them into ``stats.json``,
two PNG histograms and a ``report.md`` that embeds them.
"""

from __future__ import annotations

import statistics
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from shelley.data.clean import clean_snippets, is_noise
from shelley.data.ingest import Snippet
from shelley.io import atomic_dir, atomic_write_text, write_json


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"total": 0, "mean": 0.0, "median": 0.0, "p95": 0.0, "min": 0, "max": 0}
    ordered = sorted(values)
    return {
        "total": sum(values),
        "mean": round(statistics.fmean(values), 2),
        "median": float(statistics.median(ordered)),
        "p95": float(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]),
        "min": ordered[0],
        "max": ordered[-1],
    }


def inspect_corpus(
    snippets: list[Snippet],
    *,
    tokenizer: Any | None = None,
    clean_kwargs: dict | None = None,
    examples: int = 3,
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """All the numbers of the EDA report as a JSON-ready dict, and the per-row lengths for the histograms."""
    texts = [s.text for s in snippets]
    chars = [len(t) for t in texts]
    n_words = [len(t.split()) for t in texts]
    stats: dict[str, Any] = {
        "rows": len(texts),
        "characters": _summary(chars),
        "words": _summary(n_words),
        "empty_rows": sum(1 for t in texts if not t.strip()),
    }
    lengths = {"chars": chars}
    if tokenizer is not None:
        # No special tokens: we count the text's own tokens, what packing will actually feed the model.
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths["tokens"] = [len(x) for x in ids]
        stats["tokens"] = _summary(lengths["tokens"])
        stats["tokenizer"] = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        stats["chars_per_token"] = round(sum(chars) / max(1, stats["tokens"]["total"]), 3)
    non_ascii = Counter(ch for t in texts for ch in t if ord(ch) > 127)
    stats["non_ascii"] = [
        {"char": ch, "codepoint": f"U+{ord(ch):04X}", "name": unicodedata.name(ch, "?"), "count": n}
        for ch, n in non_ascii.most_common()
    ]
    noise = [t.strip() for t in texts if t.strip() and is_noise(t.strip())]
    stats["noise_rows"] = {"count": len(noise), "examples": list(dict.fromkeys(noise))[:10]}
    stats["exact_duplicates"] = len(texts) - len(set(texts))
    sections = [s.section for s in snippets if s.section]
    stats["sections"] = {"count": len(dict.fromkeys(sections)), "names": list(dict.fromkeys(sections))[:60]}
    kept, steps = clean_snippets(snippets, **(clean_kwargs or {}))
    stats["cleaning"] = [r.as_dict() for r in steps]
    stats["rows_after_cleaning"] = len(kept)
    ranked = sorted((t for t in texts if t.strip()), key=len)
    stats["shortest"] = ranked[:examples]
    stats["longest"] = [t[:400] + ("…" if len(t) > 400 else "") for t in ranked[-examples:][::-1]]
    return stats, lengths


def plot_histogram(values: list[int], title: str, xlabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed for a PNG
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.hist(values, bins=min(60, max(5, len(set(values)))), color="#4a6fa5", edgecolor="white")
    if values:
        mean = statistics.fmean(values)
        ax.axvline(mean, color="#c0392b", linestyle="--", label=f"mean {mean:.0f}")
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_report(stats: dict[str, Any], source: str) -> str:
    parts = [f"# Corpus report: `{source}`", ""]
    rows = [
        ["rows", stats["rows"]],
        ["rows after cleaning", stats["rows_after_cleaning"]],
        ["characters", stats["characters"]["total"]],
        ["words", stats["words"]["total"]],
    ]
    if "tokens" in stats:
        rows += [
            [f"tokens ({stats['tokenizer']})", stats["tokens"]["total"]],
            ["characters per token", stats["chars_per_token"]],
        ]
    rows += [
        ["empty rows", stats["empty_rows"]],
        ["exact duplicates", stats["exact_duplicates"]],
        ["noise rows", stats["noise_rows"]["count"]],
        ["chapters/letters found", stats["sections"]["count"]],
    ]
    parts += [_md_table(["", "value"], rows), "", "## Lengths", ""]
    measures = ["characters", "words"] + (["tokens"] if "tokens" in stats else [])
    parts += [
        _md_table(
            ["per row", "mean", "median", "p95", "min", "max"],
            [[m, *(stats[m][k] for k in ("mean", "median", "p95", "min", "max"))] for m in measures],
        )
    ]
    parts += ["", "![length in characters](length_chars.png)", ""]
    if "tokens" in stats:
        parts += ["![length in tokens](length_tokens.png)", ""]
    parts += ["## Cleaning (what `shelley data build` will do)", ""]
    parts += [
        _md_table(
            ["step", "changed", "removed", "remaining"],
            [[c["step"], c["changed"], c["removed"], c["remaining"]] for c in stats["cleaning"]],
        ),
        "",
    ]
    parts += ["## Noise rows", ""]
    parts += [f"- `{e}`" for e in stats["noise_rows"]["examples"]] or ["none"]
    parts += ["", "## Non-ASCII characters", ""]
    if stats["non_ascii"]:
        parts += [
            _md_table(
                ["char", "code point", "name", "count"],
                [[f"`{c['char']}`", c["codepoint"], c["name"], c["count"]] for c in stats["non_ascii"][:30]],
            )
        ]
    else:
        parts += ["none: the corpus is pure ASCII"]
    parts += ["", "## Shortest rows", ""] + [f"- `{t}`" for t in stats["shortest"]]
    parts += ["", "## Longest rows", ""] + [f"- {t}" for t in stats["longest"]]
    return "\n".join(parts) + "\n"


def write_inspect_report(stats: dict[str, Any], lengths: dict[str, list[int]], source: str, out: Path) -> list[Path]:
    """Write stats.json, the PNG histograms and report.md into ``out`` (an existing, empty directory)."""

    write_json(out / "stats.json", {"source": source, **stats})
    files = [out / "stats.json"]
    plot_histogram(lengths["chars"], "Snippet length in characters", "characters", out / "length_chars.png")
    files.append(out / "length_chars.png")
    if "tokens" in lengths:
        plot_histogram(
            lengths["tokens"],
            f"Snippet length in tokens ({stats.get('tokenizer')})",
            "tokens",
            out / "length_tokens.png",
        )
        files.append(out / "length_tokens.png")
    atomic_write_text(out / "report.md", render_report(stats, source))
    files.append(out / "report.md")
    return files


def inspect_to(source: Path, cfg, out: Path, *, tokenizer: str | None, loader, overwrite: bool, on_stage=None) -> dict:
    """Read, measure and write the EDA report of ``source`` into ``out`` (atomically); returns the stats.
    Token counts use ``tokenizer`` (default: model.tokenizer, else model.name; "none" skips them), loaded with
    ``loader(name, trust_remote_code=...)`` once the corpus has been read; ``on_stage(text)`` names each stage."""
    from shelley.data.build import clean_kwargs, load_corpus

    say = on_stage or (lambda _text: None)
    say("reading corpus")
    snippets, fmt_used = load_corpus(source, cfg.data)
    name = tokenizer or cfg.model.tokenizer or cfg.model.name
    tok = None
    if name.lower() != "none":
        say(f"loading tokenizer {name}")
        tok = loader(name, trust_remote_code=cfg.model.trust_remote_code)
    say("measuring")
    stats, lengths = inspect_corpus(snippets, tokenizer=tok, clean_kwargs=clean_kwargs(cfg.data))
    stats["format"] = fmt_used
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_inspect_report(stats, lengths, str(source), tmp)
    return stats
