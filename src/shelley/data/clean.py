"""Cleaning steps, each a pure function over snippets, each reported with how many rows it touched."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace

from shelley.data.ingest import BARE_NUMBER_RE, Snippet, is_heading

_QUOTES = str.maketrans(
    {
        "“": '"',
        "”": '"',
        "„": '"',
        "‟": '"',
        "«": '"',
        "»": '"',
        "‘": "'",
        "’": "'",
        "‚": "'",
        "‛": "'",
        "`": "'",
    }
)
EM_DASH = "—"
# Typewriter "--" and the Unicode dash family all become one em dash, so the model sees one dash, not four.
_DASH_RE = re.compile(r"\s*(?:--+|[–—―])\s*")
_WORD_RE = re.compile(r"[\w']+")


@dataclass
class StepReport:
    step: str
    changed: int = 0  # rows edited in place
    removed: int = 0  # rows dropped
    remaining: int = 0

    def as_dict(self) -> dict[str, int | str]:
        return {
            "step": self.step,
            "changed": self.changed,
            "removed": self.removed,
            "remaining": self.remaining,
        }


def words(text: str) -> list[str]:
    """Lower-cased word tokens: what n-gram overlap, near-duplicate and word counts all use."""
    return _WORD_RE.findall(text.lower())


def strip_whitespace(text: str) -> str:
    return " ".join(text.split())


def normalize_quotes(text: str) -> str:
    return text.translate(_QUOTES)


def normalize_dashes(text: str) -> str:
    # Keep the dash tight to its neighbours ("There—for with your leave") as the book prints it.
    return _DASH_RE.sub(EM_DASH, text)


def is_noise(text: str) -> bool:
    """Bare headings ("Chapter 4", "Letter 2") and bare numbers (a heading's number on its own line)."""
    return is_heading(text) or bool(BARE_NUMBER_RE.match(text))


def near_duplicate_key(text: str) -> str:
    """Rows that differ only in case, punctuation or spacing share this key."""
    return " ".join(words(text))


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def find_near_duplicates(texts: list[str], threshold: float = 0.8, max_postings: int = 200) -> set[int]:
    """Indices of rows that repeat an earlier row: same normalised text, or shingle Jaccard >= threshold.

    An inverted index from word 3-grams to rows finds candidate pairs; 3-grams shared by more than
    ``max_postings`` rows are stock phrases and are left out of candidate search (not of the Jaccard score),
    which keeps this near-linear on large corpora.
    """
    dup: set[int] = set()
    seen_keys: dict[str, int] = {}
    shingles = [_shingles(t) for t in texts]
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, text in enumerate(texts):
        key = near_duplicate_key(text)
        if key in seen_keys:
            dup.add(i)
            continue
        seen_keys[key] = i
        sh = shingles[i]
        if sh:
            # Count the shingles each earlier row shares with this one through the index. Jaccard >= t needs
            # at least t * len(sh) shared shingles, and a row can share at most its count plus the common
            # shingles left out of the search, so rows below that bound are skipped without a set
            # intersection: exact, and it keeps large corpora linear.
            shared: Counter[int] = Counter()
            unsearched = 0
            for g in sh:
                postings = index.get(g)
                if postings is None:
                    continue
                if len(postings) <= max_postings:
                    shared.update(postings)
                else:
                    unsearched += 1
            need = threshold * len(sh) - unsearched - 1e-9  # (float slack: 0.8 * 5 is 4.000000000000001)
            for j, n in shared.items():
                if n < need:
                    continue
                other = shingles[j]
                inter = len(sh & other)
                if inter and inter / (len(sh) + len(other) - inter) >= threshold:
                    dup.add(i)
                    break
        if i not in dup:
            for g in sh:
                index[g].append(i)
    return dup


def clean_snippets(
    snippets: list[Snippet],
    *,
    quotes: bool = True,
    dashes: bool = True,
    drop_noise: bool = True,
    min_words: int = 1,
    dedup_near: bool = True,
    near_threshold: float = 0.8,
) -> tuple[list[Snippet], list[StepReport]]:
    """Run every cleaning step in order; returns the kept snippets and one report per step."""
    reports: list[StepReport] = []
    rows = list(snippets)

    def edit(name: str, fn: Callable[[str], str]) -> None:
        nonlocal rows
        new = [replace(s, text=fn(s.text)) for s in rows]
        changed = sum(a.text != b.text for a, b in zip(rows, new, strict=True))
        rows = new
        reports.append(StepReport(name, changed=changed, remaining=len(rows)))

    def drop(name: str, keep: Callable[[int, Snippet], bool]) -> None:
        nonlocal rows
        kept = [s for i, s in enumerate(rows) if keep(i, s)]
        reports.append(StepReport(name, removed=len(rows) - len(kept), remaining=len(kept)))
        rows = kept

    edit("strip whitespace", strip_whitespace)
    if quotes:
        edit("normalise quotes", normalize_quotes)
    if dashes:
        edit("normalise dashes", normalize_dashes)
    drop("drop empty rows", lambda _, s: bool(s.text))
    if drop_noise:
        drop("drop noise rows (bare headings, bare numbers)", lambda _, s: not is_noise(s.text))
    if min_words > 1:
        drop(f"drop rows under {min_words} words", lambda _, s: len(s.text.split()) >= min_words)
    seen: set[str] = set()

    def first_time(_: int, s: Snippet) -> bool:
        if s.text in seen:
            return False
        seen.add(s.text)
        return True

    drop("drop exact duplicates", first_time)
    if dedup_near:
        near = find_near_duplicates([s.text for s in rows], threshold=near_threshold)
        drop("drop near duplicates", lambda i, _: i not in near)
    return rows, reports
