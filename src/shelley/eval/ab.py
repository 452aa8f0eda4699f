"""A blind A/B test for human readers: which of two passages sounds more like the author?

``build_page`` cuts passages of exactly the same number of words from the fine-tuned model's text, the base
model's and the author's held-out text, pairs the fine-tuned model against each of the others, shuffles the
sides with a seed and hides every label. The page is one self-contained HTML file (no server, no network);
the reader's answers download as JSON. The key (which side was which) stays with the run, and ``score``
reveals and tallies: how often the fine-tuned passage was picked, with a Wilson interval and a two-sided
binomial test against 50%.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

from shelley.errors import ShelleyError
from shelley.eval.attribution import wilson
from shelley.io import atomic_write_text, check_output_file, write_json

KINDS = {
    "base": "fine-tuned vs base model",
    "held_out": "fine-tuned vs the author's own text",
    "scene": "fine-tuned scene vs the author's own passage of the same length (which did the author write?)",
}
_ENDS_SENTENCE = re.compile(r"[.!?][\"')\]]*$")


def passages(text: str, words: int) -> list[str]:
    """Non-overlapping passages of exactly ``words`` words, each starting at the start of a sentence (a passage
    that stops mid-sentence ends with an ellipsis)."""
    ws = text.split()
    starts = [i for i in range(len(ws)) if (i == 0 or _ENDS_SENTENCE.search(ws[i - 1])) and ws[i][:1].isupper()]
    out, free = [], 0
    for i in starts:
        if i < free or i + words > len(ws):
            continue
        chunk = ws[i : i + words]
        out.append(" ".join(chunk) + ("" if _ENDS_SENTENCE.search(chunk[-1]) else " …"))
        free = i + words
    return out


def windows(text: str, words: int) -> list[str]:
    """Consecutive passages of exactly ``words`` words, wherever they start."""
    ws = text.split()
    return [" ".join(ws[i : i + words]) + " …" for i in range(0, len(ws) - words + 1, words)]


def build_page(
    texts: dict[str, str], author: str, title: str, *, pairs: int = 30, words: int = 120, seed: int = 0
) -> tuple[str, dict[str, Any]]:
    """(the HTML page, its key). ``texts`` holds ``finetuned``, ``base`` and ``held_out``."""
    missing = [k for k in ("finetuned", "base", "held_out") if not texts.get(k)]
    if missing:
        raise ShelleyError(f"no {', '.join(missing)} text for the A/B page; run `shelley eval RUN --attribution` first")
    if pairs < 2:
        raise ShelleyError(f"--pairs must be at least 2 (one of each comparison), got {pairs}")
    rng = random.Random(seed)
    per_kind = {"base": pairs // 2, "held_out": pairs - pairs // 2}
    need = {"finetuned": pairs, **per_kind}
    pools = {k: passages(texts[k], words) for k in need}
    # Text with too few sentence starts (a model that writes no sentences) is cut into plain word windows instead.
    pools = {k: v if len(v) >= need[k] else windows(texts[k], words) for k, v in pools.items()}
    short = {k: len(v) for k, v in pools.items() if len(v) < need[k]}
    if short:
        have = ", ".join(f"{k} {n}" for k, n in short.items())
        raise ShelleyError(
            f"not enough text for {pairs} pairs of {words}-word passages (passages available: {have}); "
            "lower --pairs or --words, or generate more with `shelley eval RUN --attribution --bags N`"
        )
    for pool in pools.values():
        rng.shuffle(pool)
    ft = iter(pools["finetuned"])
    items = [(kind, next(ft), pools[kind][i]) for kind, n in per_kind.items() for i in range(n)]
    rng.shuffle(items)
    page_pairs, key_pairs = [], []
    for i, (kind, tuned, other) in enumerate(items, 1):
        pid = f"p{i:02d}"
        left_is_tuned = rng.random() < 0.5
        sides = ("finetuned", kind) if left_is_tuned else (kind, "finetuned")
        shown = (tuned, other) if left_is_tuned else (other, tuned)
        page_pairs.append({"id": pid, "left": shown[0], "right": shown[1]})
        key_pairs.append({"id": pid, "kind": kind, "left": sides[0], "right": sides[1]})
    page_id = hashlib.sha256(json.dumps(page_pairs, sort_keys=True).encode()).hexdigest()[:16]
    key = {"page": page_id, "author": author, "title": title, "seed": seed, "words": words, "pairs": key_pairs}
    return _render(page_pairs, page_id, author, title), key


def cut_words(text: str, n: int) -> str:
    """The first ``n`` words of ``text``, its paragraphs kept (an ellipsis where a sentence is cut)."""
    out, left = [], n
    for para in text.split("\n\n"):
        ws = para.split()
        if not ws or left <= 0:
            continue
        out.append(" ".join(ws[:left]))
        left -= min(left, len(ws))
    joined = "\n\n".join(out)
    return joined if _ENDS_SENTENCE.search(joined) else joined + " …"


def build_scene_page(
    scenes: dict[str, list[str]], author: str, title: str, *, seed: int = 0
) -> tuple[str, dict[str, Any]]:
    """(the HTML page, its key) for whole scenes: each fine-tuned scene against a passage of the author's own
    held-out text, both cut to the same number of words; the reader says which one the author wrote."""
    tuned, own = list(scenes.get("finetuned") or []), list(scenes.get("author") or [])
    if not tuned or not own:
        raise ShelleyError("no scenes for the A/B page; run `shelley eval RUN --scenes 10` first")
    rng = random.Random(seed)
    rng.shuffle(own)
    page_pairs, key_pairs = [], []
    for i, (a, b) in enumerate(zip(tuned, own, strict=False), 1):
        n = min(len(a.split()), len(b.split()))
        pid = f"p{i:02d}"
        left_is_tuned = rng.random() < 0.5
        shown = (cut_words(a, n), cut_words(b, n)) if left_is_tuned else (cut_words(b, n), cut_words(a, n))
        page_pairs.append({"id": pid, "left": shown[0], "right": shown[1]})
        sides = ("finetuned", "scene") if left_is_tuned else ("scene", "finetuned")
        key_pairs.append({"id": pid, "kind": "scene", "left": sides[0], "right": sides[1], "words": n})
    page_id = hashlib.sha256(json.dumps(page_pairs, sort_keys=True).encode()).hexdigest()[:16]
    key = {"page": page_id, "author": author, "title": title, "seed": seed, "scenes": True, "pairs": key_pairs}
    question = f"Which one did {author} write?"
    intro = (
        f"Each box holds two passages of the same length: one is from {author}'s <em>{title}</em>, the other was "
        "written by a model. For each pair, pick the one you think the author wrote. Read them as scenes: does "
        "the story hold together, do the people stay who they are?"
    )
    return _render(page_pairs, page_id, author, title, question=question, intro=intro), key


def _render(
    pairs: list[dict[str, str]], page_id: str, author: str, title: str, *, question: str = "", intro: str = ""
) -> str:
    from importlib.resources import files

    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(files("shelley.eval").joinpath("templates/ab.html.j2").read_text("utf-8"))
    question = question or f"Which sounds more like {author}?"
    intro = intro or (
        f"Each box below holds two passages of the same length. For each pair, pick the one that sounds more like "
        f"{author}, the author of <em>{title}</em>. Nothing tells you where a passage came from; go by the voice."
    )
    # The intro is ours (the author and title escaped into it here); the passages stay autoescaped.
    intro = Markup(intro.replace(author, str(Markup.escape(author))).replace(title, str(Markup.escape(title))))
    return template.render(pairs=pairs, page_id=page_id, author=author, title=title, question=question, intro=intro)


def score(answers: dict[str, Any], key: dict[str, Any]) -> dict[str, Any]:
    """Reveal the answers against the key: per comparison, how often the fine-tuned passage was picked."""
    from scipy.stats import binomtest

    if not isinstance(answers, dict) or not isinstance(answers.get("answers"), dict):
        raise ShelleyError('the answers file must be {"page": ..., "answers": {"p01": "left", ...}}: download it again')
    if answers.get("page") != key.get("page"):
        raise ShelleyError(
            f"the answers are for page {answers.get('page')!r} but the key is for page {key.get('page')!r}; "
            "pass the ab-key.json written with that page"
        )
    picks = answers["answers"]
    out: dict[str, Any] = {"page": key["page"], "author": key.get("author"), "comparisons": {}}
    present = {p["kind"] for p in key["pairs"]}
    for kind, label in KINDS.items():
        if kind not in present:
            continue
        rows = [p for p in key["pairs"] if p["kind"] == kind]
        answered = [p for p in rows if picks.get(p["id"]) in ("left", "right")]
        k = sum(p[picks[p["id"]]] == "finetuned" for p in answered)
        n = len(answered)
        out["comparisons"][kind] = {
            "label": label,
            "pairs": len(rows),
            "answered": n,
            "finetuned_picked": k,
            "share": k / n if n else 0.0,
            "interval": wilson(k, n),
            "p_two_sided": float(binomtest(k, n).pvalue) if n else 1.0,
        }
    out["answered"] = sum(c["answered"] for c in out["comparisons"].values())
    return out


def read_json(path, what: str) -> Any:
    """A JSON file the user hands in (answers, a key), or a one-line error naming it."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ShelleyError(f"{what} file not found: {path}; check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ShelleyError(f"{what} file {path} is not valid JSON; download or write it again") from None


def write_scene_page(run, page_path=None, *, seed: int, overwrite: bool = False):
    """The blind A/B page of a run's scenes (from `shelley eval --scenes`) and its key; (page path, key path)."""

    if not run.scene_texts.exists():
        raise ShelleyError(f"{run.root} has no {run.scene_texts.name}; run `shelley eval {run.root} --scenes 10` first")
    page_path = page_path or run.ab_scene_page
    check_output_file(page_path, overwrite=overwrite)
    check_output_file(run.ab_scene_key, overwrite=overwrite, flag="--overwrite (the key)")
    doc = read_json(run.scene_texts, "texts")
    html, key = build_scene_page(doc["texts"], doc["author"], doc.get("title", "the corpus"), seed=seed)
    write_json(run.ab_scene_key, key)
    atomic_write_text(page_path, html)
    return page_path, run.ab_scene_key


def write_page(run, page_path=None, *, pairs: int, words: int, seed: int, overwrite: bool = False):
    """The blind A/B page of a run (from the texts its attribution wrote) and its key, next to each other;
    returns (page path, key path)."""

    if not run.voice_texts.exists():
        raise ShelleyError(
            f"{run.root} has no {run.voice_texts.name}; run `shelley eval {run.root} --attribution` first"
        )
    page_path = page_path or run.ab_page
    check_output_file(page_path, overwrite=overwrite)
    check_output_file(run.ab_key, overwrite=overwrite, flag="--overwrite (the key)")
    doc = read_json(run.voice_texts, "texts")
    html, key = build_page(
        doc["texts"], doc["author"], doc.get("title", "the corpus"), pairs=pairs, words=words, seed=seed
    )
    write_json(run.ab_key, key)
    atomic_write_text(page_path, html)
    return page_path, run.ab_key
