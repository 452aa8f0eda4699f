"""Leakage-safe train/validation split and the n-gram overlap report that shows how safe it is.

Random rows leak: the paragraph before and after a validation row sit in train, and a model that memorises
them scores a flattering perplexity. shelley holds out whole chapters/letters (``section``) or contiguous
runs of snippets (``block``) and then measures what still overlaps.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from shelley.data.clean import words
from shelley.data.ingest import Snippet
from shelley.errors import ShelleyError

MIN_SECTIONS = 5  # fewer headings than this is not a book structure worth splitting on


@dataclass
class SplitResult:
    labels: list[str]  # "train" / "validation" / "test", one per snippet
    method: str  # the method actually used (section may fall back to block)
    groups: dict[str, list[str]] = field(default_factory=dict)  # split -> held-out group names
    note: str = ""


def _groups(snippets: list[Snippet], method: str, block_size: int) -> list[tuple[str, list[int]]]:
    groups: list[tuple[str, list[int]]] = []
    if method == "section":
        seen: Counter[str] = Counter()  # a book in volumes numbers its chapters anew in each: "Chapter I (2)"
        last = None
        for i, s in enumerate(snippets):
            name = s.section or "front matter"
            if name != last:
                seen[name] += 1
                groups.append((name if seen[name] == 1 else f"{name} ({seen[name]})", []))
                last = name
            groups[-1][1].append(i)
    elif method == "block":
        for start in range(0, len(snippets), block_size):
            end = min(start + block_size, len(snippets))
            groups.append((f"rows {start}-{end - 1}", list(range(start, end))))
    else:  # random: every row its own group
        groups = [(f"row {i}", [i]) for i in range(len(snippets))]
    return groups


def split_snippets(
    snippets: list[Snippet],
    *,
    method: str = "section",
    validation_fraction: float = 0.1,
    test_fraction: float = 0.0,
    block_size: int = 40,
    seed: int = 42,
) -> SplitResult:
    """Assign each snippet to train / validation / test, holding out whole groups; deterministic per seed."""
    n = len(snippets)
    note = ""
    if method == "section":
        n_sections = len({s.section for s in snippets if s.section})
        if n_sections < MIN_SECTIONS:
            note = f"only {n_sections} chapter/letter headings found; split by blocks of {block_size} snippets"
            method = "block"
    groups = _groups(snippets, method, block_size)
    wanted = [("validation", validation_fraction), ("test", test_fraction)]
    n_held = sum(1 for _, f in wanted if f > 0)
    if len(groups) < n_held + 1:
        raise ShelleyError(
            f"corpus has {n} snippets in {len(groups)} {method} group(s): too few to hold out a validation split; "
            "add text or use --set data.split=random"
        )
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    labels = ["train"] * n
    chosen: dict[str, list[str]] = {}
    pos = 0
    for name, frac in wanted:
        if frac <= 0:
            continue
        target = frac * n
        taken = 0
        chosen[name] = []
        # Take shuffled groups until the target is met: at least one, never the last one (train needs it),
        # and not a group that would overshoot the target by more than it closes the gap.
        while pos < len(order) - 1 and taken < target:
            gname, idx = groups[order[pos]]
            if taken and taken + len(idx) - target > target - taken:
                break
            for i in idx:
                labels[i] = name
            taken += len(idx)
            chosen[name].append(gname)
            pos += 1
    if "train" not in labels:
        raise ShelleyError("the split left no training rows; lower --set data.validation_fraction")
    # Report groups in book order, not in the shuffled order they were drawn.
    book_order = {g[0]: k for k, g in enumerate(groups)}
    chosen = {k: sorted(v, key=book_order.__getitem__) for k, v in chosen.items()}
    return SplitResult(labels=labels, method=method, groups=chosen, note=note)


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    w = words(text)
    return [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]


def ngram_overlap(train: list[str], held_out: list[str], n: int = 8, examples: int = 5) -> dict:
    """How many of the held-out rows' word n-grams also occur in train (n-grams never cross rows).

    Returns counts (distinct n-grams and occurrences), the shared share, the held-out row with the most
    shared n-grams, and the most common shared n-grams as examples.
    """
    train_set = {g for t in train for g in ngrams(t, n)}
    total = 0
    shared_counter: Counter[tuple[str, ...]] = Counter()
    worst = {"row": None, "shared": 0, "text": ""}
    for i, text in enumerate(held_out):
        grams = ngrams(text, n)
        total += len(grams)
        hits = [g for g in grams if g in train_set]
        shared_counter.update(hits)
        if len(hits) > worst["shared"]:
            worst = {"row": i, "shared": len(hits), "text": text[:300]}
    shared_occurrences = sum(shared_counter.values())
    return {
        "n": n,
        "held_out_ngrams": total,
        "shared_ngram_occurrences": shared_occurrences,
        "shared_distinct_ngrams": len(shared_counter),
        "shared_fraction": (shared_occurrences / total) if total else 0.0,
        "max_shared_in_one_row": worst["shared"],
        "worst_row": worst,
        "examples": [" ".join(g) for g, _ in shared_counter.most_common(examples)],
    }
