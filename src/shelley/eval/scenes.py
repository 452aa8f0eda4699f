"""Judging whole scenes: does a 1,000-word text keep the voice, avoid loops and copies, and hold together?

Per text, cheap offline measures that compare a model's scene with the author's own text cut to the same
length:

* ``repeated_4gram_share``: the share of the text's word 4-grams that repeat one seen earlier in it;
* ``distinct_2``: distinct word bigrams over all bigrams;
* ``gzip_ratio``: compressed over raw bytes (a looping text compresses well);
* ``longest_self_repeat``: the longest word span that occurs twice in the text; 12 words or more is a loop;
* ``longest_copied``: the longest span copied from the corpus (the originality index);
* ``names_per_1000``: distinct character names per 1,000 words. A name here is a word written capitalised in
  mid-sentence that the corpus never writes in lower case (or a word never seen in the corpus, capitalised
  so): a scene that keeps its people has few; one whose people drift into new ones has many (name churn).

``scene_rule`` is the pre-registered PASS/FAIL rule of issue "Whole scenes" (fixed before any model output
was seen; do not tune it).
"""

from __future__ import annotations

import gzip
import itertools
import re
from collections.abc import Iterable
from statistics import median
from typing import Any

from shelley.io import write_png

LOOP_WORDS = 12  # a self-repeat this long is a loop
WORD = re.compile(r"[A-Za-z]+(?:['’][a-z]+)?")
OPENERS = "\"'“‘([—- "


def _starts_sentence(text: str, at: int) -> bool:
    """Whether the word at ``at`` opens a sentence, a paragraph or a quotation (where anything is capitalised)."""
    before = text[max(0, at - 12) : at]
    kept = before.rstrip(OPENERS + "\n")
    gap = before[len(kept) :]
    if not kept:
        return at <= 12 or "\n" in gap or any(q in gap for q in "\"'“‘")
    return "\n" in gap or any(q in gap for q in "“‘") or kept[-1] in ".!?:;" or (gap.strip() == '"' and kept[-1] == ",")


def _lower_words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def repeated_4gram_share(text: str) -> float:
    grams = _ngrams(_lower_words(text), 4)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_2(text: str) -> float:
    grams = _ngrams(_lower_words(text), 2)
    return len(set(grams)) / len(grams) if grams else 0.0


def gzip_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(gzip.compress(raw, compresslevel=9, mtime=0)) / len(raw) if raw else 0.0


def longest_self_repeat(text: str) -> int:
    """The longest run of words that occurs at two places of ``text`` (they may overlap): binary search on the
    length, each step a set of hashed n-grams."""
    w = _lower_words(text)
    lo, hi = 0, max(0, len(w) - 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        grams = _ngrams(w, mid)
        if len(set(grams)) < len(grams):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


class NameFinder:
    """Which capitalised mid-sentence words are names, by how the corpus writes them."""

    def __init__(self, corpus_texts: Iterable[str]) -> None:
        self.lower: set[str] = set()
        for t in corpus_texts:
            self.lower.update(w for w in WORD.findall(t) if w[0].islower())

    def names(self, text: str) -> set[str]:
        lowered_here = {w.lower() for w in WORD.findall(text) if w[0].islower()}
        out = set()
        for m in WORD.finditer(text):
            w = m.group()
            if not w[0].isupper() or len(w) < 3 or _starts_sentence(text, m.start()):
                continue
            if w.lower() not in self.lower and w.lower() not in lowered_here:
                out.add(w)
        return out

    def per_1000(self, text: str) -> float:
        n = len(text.split())
        return 1000 * len(self.names(text)) / n if n else 0.0


def scene_measures(text: str, *, index=None, names: NameFinder | None = None) -> dict[str, Any]:
    """Every per-scene measure of the module docstring for one text."""
    out: dict[str, Any] = {
        "words": len(text.split()),
        "repeated_4gram_share": repeated_4gram_share(text),
        "distinct_2": distinct_2(text),
        "gzip_ratio": gzip_ratio(text),
        "longest_self_repeat": longest_self_repeat(text),
    }
    out["loops"] = out["longest_self_repeat"] >= LOOP_WORDS
    if index is not None:
        out["longest_copied"] = index.check(text)["longest_span"]
    if names is not None:
        out["names_per_1000"] = names.per_1000(text)
        out["names"] = sorted(names.names(text))
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians (and the worst case where it matters) over a group of texts."""
    if not rows:
        return {"texts": 0}
    out: dict[str, Any] = {"texts": len(rows), "loops": sum(bool(r["loops"]) for r in rows)}
    for k in ("words", "repeated_4gram_share", "distinct_2", "gzip_ratio", "longest_self_repeat", "names_per_1000"):
        if k in rows[0]:
            out[f"median_{k}"] = median(r[k] for r in rows)
    if "longest_copied" in rows[0]:
        out["max_longest_copied"] = max(r["longest_copied"] for r in rows)
    if "to_author" in rows[0]:
        out["to_author"] = sum(bool(r["to_author"]) for r in rows)
    return out


def author_windows(texts: list[str], words: int, k: int) -> list[str]:
    """``k`` stretches of the author's text of ``words`` words each, evenly spread through ``texts`` (whole
    paragraphs joined by blank lines, cut at the word count): the author's own length-matched scenes."""
    paras = [t for t in texts if t.strip()]
    flat = [(i, w) for i, t in enumerate(paras) for w in t.split()]
    if len(flat) < words:
        return []
    starts = [round(j * (len(flat) - words) / max(1, k - 1)) for j in range(k)] if k > 1 else [0]
    out = []
    for s in sorted(set(starts)):
        chunk = flat[s : s + words]
        lines: list[list[str]] = []
        last = None
        for i, w in chunk:
            if i != last:
                lines.append([])
                last = i
            lines[-1].append(w)
        out.append("\n\n".join(" ".join(x) for x in lines))
    return out


def scene_rule(base: dict[str, Any], finetuned: dict[str, Any], author: dict[str, Any]) -> dict[str, Any]:
    """Issue "Whole scenes", pre-registered: PASS when no fine-tuned scene loops, its median repeated-4-gram
    share is at most 2x the author's, its median distinct-2 at least 0.95x the author's, at least 9 of 10 of its
    scenes go to the author (the base model's at most 1 of 10) and none copies more than 12 words. Shares
    scale with the number of scenes (9 of 10 is 90%)."""
    n, nb = finetuned["texts"], base["texts"]
    checks = {
        "no_loops": finetuned["loops"] == 0,
        "repeats_at_most_2x_author": finetuned["median_repeated_4gram_share"]
        <= 2 * author["median_repeated_4gram_share"],
        "distinct_2_at_least_095_author": finetuned["median_distinct_2"] >= 0.95 * author["median_distinct_2"],
        "copies_at_most_12_words": finetuned.get("max_longest_copied", 0) <= 12,
    }
    if "to_author" in finetuned and "to_author" in base:
        checks["finetuned_to_author_at_least_90pct"] = finetuned["to_author"] >= 0.9 * n
        checks["base_to_author_at_most_10pct"] = base["to_author"] <= 0.1 * nb
    return {"checks": checks, "attribution_checked": "to_author" in finetuned, "pass": all(checks.values())}


def scene_pass(
    model,
    tokenizer,
    cfg,
    stream,
    n: int,
    words: int,
    *,
    paragraph_break: str,
    who: str,
    on_progress=None,
    engine=None,
) -> dict[str, Any]:
    """One model's part of the scene test: ``n`` scenes of ``words`` words from the eval prompts (scene ``i``
    from prompt ``i mod 5`` with seed ``generation.seed + i``, no guard: the model is judged, not the writer),
    and its context curve over the held-out token ``stream``. ``engine``: the token engine that writes the
    scenes (default: transformers on ``model``; the CLI passes llama.cpp's for ``--engine llamacpp``)."""
    import time

    from shelley.generate import context_window
    from shelley.generate.scene import transformers_engine, write_scene
    from shelley.models.bos import bos_prefix
    from shelley.models.perplexity import position_losses

    engine = engine or transformers_engine(model, tokenizer, cfg.generation)
    prompts = cfg.eval.prompts
    scenes, t0 = [], time.perf_counter()
    for i in range(n):
        if on_progress:
            on_progress(f"{who} scenes", i, n)
        scene = write_scene(
            engine, tokenizer, prompts[i % len(prompts)], words, seed=cfg.generation.seed + i,
            paragraph_break=paragraph_break,
        )  # fmt: skip
        scenes.append(scene)
    if on_progress:
        on_progress(f"{who} scenes", n, n)
    seconds = time.perf_counter() - t0
    prefix = bos_prefix(tokenizer)
    curve = position_losses(model, stream, window=min(1024, context_window(model) - len(prefix)), prefix=prefix)
    return {
        "texts": [s.text for s in scenes],
        "prompts": [s.prompt for s in scenes],
        "seconds": seconds,
        "tokens": sum(s.drawn_tokens for s in scenes),
        "paragraph_break": paragraph_break,
        "curve": curve,
    }


def judge_scenes(
    passes: dict[str, dict[str, Any]], train_texts: list[str], held_out: list[str], words: int, *, index, test=None
) -> dict[str, Any]:
    """The scene block of the report: every measure per scene for base, fine-tuned and the author's own held-out
    text cut to the same length, their summaries, the rule, and both context curves with their bands."""
    from shelley.eval.attribution import summarize as attribute_bags
    from shelley.eval.attribution import tokens
    from shelley.models.perplexity import band

    names = NameFinder(train_texts)
    n = max(len(p["texts"]) for p in passes.values())
    texts = {who: p["texts"] for who, p in passes.items()} | {"author": author_windows(held_out, words, n)}
    rows: dict[str, list[dict[str, Any]]] = {}
    for who, group in texts.items():
        rows[who] = []
        for text in group:
            row = scene_measures(text, index=index, names=names)
            if test is not None:  # one scene is one bag
                got = attribute_bags(test.attributor, test.target, [tokens(text)])
                row["to_author"] = got["target_bags"] == 1
                row["attributed_to"] = max(got["shares"], key=got["shares"].get)
            rows[who].append(row)
    summary = {who: summarize(r) for who, r in rows.items()}
    rule = scene_rule(summary["base"], summary["finetuned"], summary["author"]) if summary["author"]["texts"] else None
    curves = {}
    for who, p in passes.items():
        c = p["curve"]
        curves[who] = c | {"band_64_128": band(c, 64, 128), "band_512_1024": band(c, 512, 1024),
                           "mean": band(c, 1, len(c["loss"]))}  # fmt: skip
    timing = {who: {"seconds": round(p["seconds"], 1), "tokens": p["tokens"],
                    "tokens_per_s": round(p["tokens"] / p["seconds"], 1) if p["seconds"] else None,
                    "paragraph_break": p["paragraph_break"]} for who, p in passes.items()}  # fmt: skip
    return {
        "words": words,
        "scenes": n,
        "prompts": passes["finetuned"]["prompts"],
        "rows": rows,
        "summary": summary,
        "rule": rule,
        "context_curve": curves,
        "timing": timing,
    }, texts


def plot_context_curve(curves: dict[str, dict[str, Any]], labels: dict[str, str], path):
    """Mean loss by token position for each model (log-scaled positions, smoothed in log-spaced bins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    for who, c in curves.items():
        loss = np.asarray(c["loss"])
        if not len(loss):
            continue
        edges = np.unique(np.geomspace(1, len(loss) + 1, 40).astype(int))
        bins = list(itertools.pairwise(edges))
        xs = [np.sqrt(a * b) for a, b in bins]
        ys = [loss[a - 1 : b - 1].mean() for a, b in bins]
        ax.plot(xs, ys, marker=".", label=f"{labels.get(who, who)} ({c['windows']} windows)")
    ax.set_xscale("log")
    ax.set_xlabel("token position (tokens of context)")
    ax.set_ylabel("mean loss (nats/token)")
    ax.set_title("Context curve on the held-out text")
    ax.axvspan(512, 1024, alpha=0.08)
    ax.legend()
    fig.tight_layout()
    return write_png(path, fig)
