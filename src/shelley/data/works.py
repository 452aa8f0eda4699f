"""An author's several books as one corpus: a folder of book files, or a manifest that lists them.

A corpus source is one file (a CSV of snippets, a book, JSONL) or *works*:

* a folder: its ``corpus.yaml`` or ``MANIFEST.json`` when it has one, else every ``.txt``/``.md``/``.csv``/
  ``.jsonl`` file in it, in name order;
* a manifest file, ``corpus.yaml``::

      author: Ann Radcliffe          # the corpus's author (default: the books' own)
      title: The works of Ann Radcliffe
      mixed_authors: false           # true lets books by other authors in (their voice then mixes in)
      books:
        - file: radcliffe__the_mysteries_of_udolpho.txt   # relative to the manifest
          title: The Mysteries of Udolpho
          author: Ann Radcliffe      # optional, as are title and author of the corpus

  or ``MANIFEST.json`` (a list of ``{file, author, title}``, as ``shelley data fetch`` writes one).

Each book is read, cleaned and split on its own with the corpus's seed (``build.prepare_splits``), so whole
chapters of every book are held out in proportion and a book's split never depends on which other books are in
the corpus.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from shelley.corpus import is_dataset_dir
from shelley.errors import ShelleyError
from shelley.io import atomic_write_text, shelley_home

MANIFESTS = ("corpus.yaml", "corpus.yml", "MANIFEST.json")
BOOK_SUFFIXES = (".txt", ".text", ".md", ".csv", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class BookFile:
    path: Path
    title: str | None = None  # from the manifest; else the book's own header or file name
    author: str | None = None


@dataclass(frozen=True)
class Works:
    """The books of a corpus given as a folder or a manifest."""

    source: Path  # the folder or the manifest file
    books: list[BookFile] = field(default_factory=list)
    author: str | None = None  # the manifest's own (corpus.yaml), if it names one
    title: str | None = None
    mixed_authors: bool = False


def is_manifest(path: Path) -> bool:
    return path.name in MANIFESTS or (path.suffix in (".yaml", ".yml") and path.is_file())


def resolve_works(source: str | Path | None) -> Works | None:
    """The books behind ``source`` when it is a folder or a manifest; None for a single corpus file or a dataset
    dir (``shelley data build``'s output), which the callers read as before."""
    if source is None:
        return None
    path = Path(source)
    if path.is_dir():
        if is_dataset_dir(path):
            return None
        for name in MANIFESTS:
            if (path / name).is_file():
                return read_manifest(path / name, source=path)
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in BOOK_SUFFIXES)
        if not files:
            raise ShelleyError(
                f"{path} is a folder with no book files ({', '.join(BOOK_SUFFIXES)}) and no corpus.yaml; "
                "put the author's books in it, or pass a corpus file"
            )
        return Works(path, [BookFile(p) for p in files])
    if path.is_file() and is_manifest(path):
        return read_manifest(path, source=path)
    return None


def read_manifest(path: Path, *, source: Path) -> Works:
    """A ``corpus.yaml`` or ``MANIFEST.json``; every book file it lists must exist."""
    fix = "see `shelley data build --help` for the corpus.yaml layout"
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShelleyError(f"cannot read the corpus manifest {path} ({exc}); {fix}") from None
    except Exception as exc:  # yaml.YAMLError, without importing yaml at module level
        raise ShelleyError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); {fix}") from None
    meta: dict = {}
    if isinstance(doc, dict):
        meta, rows = doc, doc.get("books")
    else:
        rows = doc
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and r.get("file") for r in rows):
        raise ShelleyError(f"{path} must list its books, each with a `file` (and optionally `title`, `author`); {fix}")
    unknown = set(meta) - {"author", "title", "mixed_authors", "books"}
    if unknown:
        raise ShelleyError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; use author, title, mixed_authors, books"
        )
    books = []
    for r in rows:
        book = (path.parent / str(r["file"])).resolve()
        if not book.is_file():
            raise ShelleyError(f"{path} lists {r['file']}, which is missing (looked for {book}); fix the manifest")
        books.append(BookFile(book, _opt_str(r.get("title")), _opt_str(r.get("author"))))
    if len({b.path for b in books}) < len(books):
        raise ShelleyError(f"{path} lists the same book file twice; list each book once")
    return Works(
        source, books, _opt_str(meta.get("author")), _opt_str(meta.get("title")), bool(meta.get("mixed_authors"))
    )


def _opt_str(value) -> str | None:
    return str(value).strip() or None if value is not None else None


def section_label(title: str, section: str | None) -> str:
    """A held-out group's name in a corpus of several books: the book, then its chapter."""
    return f"{title} · {section or 'front matter'}"


def manifest_for(paths: list[Path]) -> Path:
    """The corpus.yaml of several book files given on the command line (``shelley run a.txt b.txt``): their
    absolute paths, in the order given, kept under ``$SHELLEY_HOME/corpora`` and named by a hash of that list, so
    the run records one source that names every book and the same files give the same manifest."""
    import yaml

    for p in paths:
        if not Path(p).is_file():
            raise ShelleyError(f"{p}: no such file; pass book files, or one folder of them")
    books = [str(Path(p).resolve()) for p in paths]
    if len(set(books)) < len(books):
        raise ShelleyError("the same book file is given twice; give each book once")
    text = yaml.safe_dump({"books": [{"file": b} for b in books]}, sort_keys=False)
    out = shelley_home() / "corpora" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    return out
