"""The dataset card saved with every ``shelley data build``, and where a corpus came from (its Gutenberg id)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

GUTENBERG_ID = re.compile(r"(?:EBook|eBook|ebook)\s*#?\s*(\d+)")


def gutenberg_provenance(path: Path) -> tuple[int | None, bool]:
    """(Gutenberg ebook id, whether the text names Project Gutenberg), read from the first 4,000 characters of
    ``path``. A file named after a known Gutenberg book (``shelley.data.books``) counts as that ebook: a snippet
    CSV carries no header."""
    from shelley.data.books import known_book

    head = ""
    if path.is_file():
        with path.open(encoding="utf-8", errors="replace") as fh:
            head = fh.read(4000)
    m = GUTENBERG_ID.search(head)
    book = known_book(path)
    gid = int(m.group(1)) if m else (book.gutenberg_id if book else None)
    return gid, "Project Gutenberg" in head


def render_dataset_card(report: dict[str, Any]) -> str:
    """The dataset card saved with every ``shelley data build`` (and pushed by ``--push-to-hub``)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    src = Path(str(report.get("source", "")))
    gid, _ = gutenberg_provenance(src)
    rows = report["split"]["rows"]
    data = DatasetCardData(
        language="en",
        license="other" if gid is None else "pddl",
        pretty_name=f"{src.stem} snippets" if src.name else "shelley corpus",
        task_categories=["text-generation"],
        tags=["shelley", "author-style"],
        size_categories=["1K<n<10K" if sum(rows.values()) >= 1000 else "n<1K"],
    )
    cleaning = "\n".join(
        f"- {c['step']}: {c.get('changed', 0)} rows edited, {c.get('removed', 0)} removed"
        for c in report.get("cleaning", [])
    )
    overlap = report.get("overlap", {}).get("validation", {}).get("shared_fraction")
    provenance = (
        f"Project Gutenberg ebook #{gid}, public domain in the USA (check the laws of your country)."
        if gid is not None
        else "A local corpus: check its licence before sharing."
    )
    body = f"""---
{data.to_yaml()}
---

# {data.pretty_name}

Snippets of `{src.name or "a corpus"}` cleaned and split by shelley for fine-tuning a model on its style.

- **Source:** {provenance}
- **Format read:** {report.get("format", "?")}; {report.get("rows_read", "?")} rows read
- **Splits:** {", ".join(f"{k}: {v}" for k, v in rows.items())} (method `{report["split"]["method"]}`, seed
  {report["split"]["seed"]}; whole sections are held out so validation text never neighbours training text)
- **Train/validation overlap:** {"?" if overlap is None else f"{100 * overlap:.2f}%"} of validation word
  {report.get("overlap", {}).get("validation", {}).get("n", 8)}-grams also occur in train

{_books(report)}## Cleaning

{cleaning or "- none"}

Each row has `text`, `section` (chapter or letter) and `row` (its position in the source).
"""
    return str(DatasetCard(body))


def _books(report: dict[str, Any]) -> str:
    if not report.get("books"):
        return ""
    lines = [f"## Books ({report['author']})", "", *books_table(report["books"])]
    return "\n".join(lines) + "\n"


def books_table(books: list[dict[str, Any]] | None) -> list[str]:
    """Markdown lines: each book of a corpus of several, with its words, share and held-out chapters."""
    if not books:
        return []
    lines = ["| book | words | share | train rows | validation rows | held out |", "|---|---|---|---|---|---|"]
    for b in books:
        held = "; ".join(g for groups in b["held_out"].values() for g in groups) or "none"
        lines.append(
            f"| {b['title']} | {b['words']:,} | {100 * b['share']:.1f}% | {b['rows'].get('train', 0)} "
            f"| {b['rows'].get('validation', 0)} | {held} |"
        )
    return [*lines, ""]
