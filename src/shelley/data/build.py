"""``shelley data build``: corpus -> cleaned snippets -> leakage-safe split -> ``DatasetDict`` on disk."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shelley.config import DataConfig
from shelley.data.books import check_works
from shelley.data.card import books_table, render_dataset_card
from shelley.data.clean import clean_snippets
from shelley.data.ingest import Snippet, read_corpus
from shelley.data.split import ngram_overlap, split_snippets
from shelley.data.works import Works, manifest_for, resolve_works, section_label
from shelley.errors import ShelleyError
from shelley.io import atomic_dir, atomic_write_text, write_json


def clean_kwargs(cfg: DataConfig) -> dict[str, Any]:
    return {
        "quotes": cfg.normalize_quotes,
        "dashes": cfg.normalize_dashes,
        "drop_noise": cfg.drop_noise,
        "min_words": cfg.min_words,
        "dedup_near": cfg.dedup_near,
        "near_threshold": cfg.near_dup_threshold,
    }


def load_corpus(source: str | Path, cfg: DataConfig) -> tuple[list[Snippet], str]:
    """The snippets of a corpus file, or of every book of a folder or manifest (format ``books``; each snippet's
    section names its book)."""
    works = resolve_works(source)
    if works is None:
        return _read_one(source, cfg)
    snippets: list[Snippet] = []
    for book, who in zip(works.books, check_works(works, cfg.author, cfg.title)[1], strict=True):
        read, _ = _read_one(book.path, cfg)
        snippets += [
            Snippet(s.text, len(snippets) + k, section_label(who.title, s.section)) for k, s in enumerate(read)
        ]
    return snippets, "books"


def _read_one(source: str | Path, cfg: DataConfig) -> tuple[list[Snippet], str]:
    return read_corpus(
        source, fmt=cfg.format, text_column=cfg.text_column, encoding=cfg.encoding, max_words=cfg.max_words
    )


def _clean_and_split(source: str | Path, cfg: DataConfig):
    """(snippets read, format, cleaning reports, split result, rows per split) of one corpus file or book."""
    snippets, fmt = _read_one(source, cfg)
    kept, steps = clean_snippets(snippets, **clean_kwargs(cfg))
    if not kept:
        raise ShelleyError(
            f"all {len(snippets)} rows of {source} are empty or noise after cleaning; check --text-column and the file"
        )
    result = split_snippets(
        kept,
        method=cfg.split,
        validation_fraction=cfg.validation_fraction,
        test_fraction=cfg.test_fraction,
        block_size=cfg.block_size,
        seed=cfg.seed,
    )
    splits: dict[str, list[Snippet]] = {}
    for s, label in zip(kept, result.labels, strict=True):
        splits.setdefault(label, []).append(s)
    return snippets, fmt, steps, result, splits


def prepare_splits(source: str | Path, cfg: DataConfig) -> tuple[dict[str, list[Snippet]], dict[str, Any]]:
    """Everything ``data build`` computes, without writing: the rows of each split and the build report. A folder
    or manifest of several books is split book by book (``_prepare_works``)."""
    t0 = time.perf_counter()
    works = resolve_works(source)
    if works is not None:
        return _prepare_works(works, cfg, t0)
    snippets, fmt, steps, result, splits = _clean_and_split(source, cfg)
    train_texts = [s.text for s in splits["train"]]
    overlap = {
        name: ngram_overlap(train_texts, [s.text for s in rows], n=cfg.ngram)
        for name, rows in splits.items()
        if name != "train"
    }
    report = {
        "source": str(source),
        "format": fmt,
        "rows_read": len(snippets),
        "cleaning": [r.as_dict() for r in steps],
        "split": {
            "method": result.method,
            "note": result.note,
            "seed": cfg.seed,
            "rows": {k: len(v) for k, v in splits.items()},
            "held_out_groups": result.groups,
        },
        "overlap": overlap,
        "config": cfg.model_dump(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return splits, report


def _prepare_works(works: Works, cfg: DataConfig, t0: float) -> tuple[dict[str, list[Snippet]], dict[str, Any]]:
    """Every book read, cleaned and split on its own with the corpus's seed (whole chapters of each held out in
    proportion), then put together; the report lists each book with its words, share and held-out chapters."""
    who, each = check_works(works, cfg.author, cfg.title)
    splits: dict[str, list[Snippet]] = {}
    books, cleaning, held, rows_read = [], {}, {}, 0
    for book, title in zip(works.books, [w.title for w in each], strict=True):
        try:
            snippets, fmt, steps, result, parts = _clean_and_split(book.path, cfg)
        except ShelleyError as exc:
            raise ShelleyError(f"book {book.path.name}: {exc}") from None
        for name, rows in parts.items():
            splits.setdefault(name, []).extend(
                Snippet(s.text, rows_read + s.row, section_label(title, s.section)) for s in rows
            )
        for name, groups in result.groups.items():
            held.setdefault(name, []).extend(section_label(title, g) for g in groups)
        for st in steps:
            total = cleaning.setdefault(st.step, {"step": st.step, "changed": 0, "removed": 0, "remaining": 0})
            for k in ("changed", "removed", "remaining"):
                total[k] += getattr(st, k)
        rows_read += len(snippets)
        books.append({
            "file": str(book.path), "title": title, "author": each[len(books)].author, "format": fmt,
            "words": sum(len(s.text.split()) for rows in parts.values() for s in rows),
            "rows": {k: len(v) for k, v in parts.items()}, "split_method": result.method, "note": result.note,
            "held_out": result.groups,
        })  # fmt: skip
    all_words = sum(b["words"] for b in books) or 1
    for b in books:
        b["share"] = round(b["words"] / all_words, 4)
    train_texts = [s.text for s in splits["train"]]
    overlap = {n: ngram_overlap(train_texts, [s.text for s in rows], n=cfg.ngram) for n, rows in splits.items()}
    overlap.pop("train")
    report = {
        "source": str(works.source),
        "format": "books",
        "author": who.author,
        "title": who.title,
        "books": books,
        "rows_read": rows_read,
        "cleaning": list(cleaning.values()),
        "split": {
            "method": "section",
            "note": "each book split on its own: whole chapters of every book held out in proportion",
            "seed": cfg.seed,
            "rows": {k: len(splits[k]) for k in ("train", "validation", "test") if k in splits},
            "held_out_groups": held,
        },
        "overlap": overlap,
        "config": cfg.model_dump(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return {k: splits[k] for k in ("train", "validation", "test") if k in splits}, report


def to_dataset_dict(splits: dict[str, list[Snippet]]):
    from datasets import Dataset, DatasetDict, Features, Value

    features = Features({"text": Value("string"), "row": Value("int64"), "section": Value("string")})
    order = [k for k in ("train", "validation", "test") if k in splits]
    return DatasetDict({k: Dataset.from_list([asdict(s) for s in splits[k]], features=features) for k in order})


def render_build_report(report: dict[str, Any]) -> str:
    lines = [f"# Dataset built from `{report['source']}` ({report['format']})", ""]
    if report.get("books"):
        lines += [f"{len(report['books'])} books by {report['author']}, each split on its own:", ""]
        lines += books_table(report["books"])
    lines += ["## Cleaning", ""]
    lines += ["| step | changed | removed | remaining |", "|---|---|---|---|"]
    lines += [f"| {c['step']} | {c['changed']} | {c['removed']} | {c['remaining']} |" for c in report["cleaning"]]
    sp = report["split"]
    lines += ["", f"## Split: by {sp['method']} (seed {sp['seed']})", ""]
    if sp["note"]:
        lines += [f"Note: {sp['note']}.", ""]
    lines += [f"- {k}: {v} rows" for k, v in sp["rows"].items()]
    for name, groups in sp["held_out_groups"].items():
        lines += [f"- {name} holds out: {', '.join(groups[:20])}{' …' if len(groups) > 20 else ''}"]
    for name, ov in report["overlap"].items():
        lines += [
            "",
            f"## Leakage: word {ov['n']}-grams of {name} also in train",
            "",
            f"- {ov['shared_ngram_occurrences']} of {ov['held_out_ngrams']} {name} {ov['n']}-grams "
            f"({100 * ov['shared_fraction']:.2f}%) also occur in train; {ov['shared_distinct_ngrams']} distinct",
            f"- the {name} row with the most: {ov['max_shared_in_one_row']} shared {ov['n']}-grams",
        ]
        lines += [f"  - `{e}`" for e in ov["examples"]]
    return "\n".join(lines) + "\n"


def save_dataset(splits: dict[str, list[Snippet]], report: dict[str, Any], out: Path, *, overwrite: bool) -> Path:
    """Save the DatasetDict plus build.json / build.md into ``out`` atomically (temp dir, then rename)."""
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    ds = to_dataset_dict(splits)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        was_on = is_progress_bar_enabled()
        disable_progress_bar()  # one bar per split per shard is noise for a sub-second save
        try:
            ds.save_to_disk(str(tmp))
        finally:
            if was_on:  # (re-enabling bars that were off, by the user's environment, would warn)
                enable_progress_bar()
        write_json(tmp / "build.json", report)
        atomic_write_text(tmp / "build.md", render_build_report(report))
        atomic_write_text(tmp / "README.md", render_dataset_card(report))  # the dataset card the Hub shows
    return out


def corpus_path(corpus: Path | list[Path] | None, cfg: DataConfig) -> Path:
    """The corpus to read: the one given (several book files: the manifest that lists them, ``works.manifest_for``),
    else data.source."""
    if isinstance(corpus, list):
        corpus = None if not corpus else corpus[0] if len(corpus) == 1 else manifest_for(corpus)
    source = corpus or (Path(cfg.source) if cfg.source else None)
    if source is None:
        raise ShelleyError("no corpus given; pass a CORPUS path or set data.source in the config")
    return source
