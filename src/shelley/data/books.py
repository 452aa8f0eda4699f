"""Who wrote the corpus, and the reference books by other authors that attribution measures it against.

* ``identify``: the corpus's author and title, from the config (``data.author``, ``data.title``), the Project
  Gutenberg header (``Title:``, ``Author:``), a file named ``author__title.txt``, or a file named after one of
  the known books below; failing all that, the file name. Nothing else in shelley assumes an author.
* ``load_reference``: the reference set, a folder of plain-text books with a ``MANIFEST.json`` (or files named
  ``author__title.txt``). ``shelley data fetch reference`` downloads the default set from Project Gutenberg.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from shelley.data.works import Works, resolve_works
from shelley.errors import ShelleyError
from shelley.io import atomic_dir, atomic_write_text, check_output_dir, shelley_home, write_json


@dataclass(frozen=True)
class Book:
    key: str  # the author's short key, as the reference files are named (austen__pride_and_prejudice.txt)
    author: str
    title: str
    year: int
    gutenberg_id: int
    reference: bool = True  # part of the default reference set that `shelley data fetch reference` downloads
    prompts: tuple[str, ...] = ()  # eval prompts for this book (the preset of a known corpus)

    @property
    def file(self) -> str:
        return f"{self.key}__{slug(self.title)}.txt"


# The default reference set: twelve period novels by authors other than the first corpus's, one book each.
BOOKS: tuple[Book, ...] = (
    Book("austen", "Jane Austen", "Pride and Prejudice", 1813, 1342),
    Book("radcliffe", "Ann Radcliffe", "The Romance of the Forest", 1791, 3467),
    Book("lewis", "Matthew Gregory Lewis", "The Monk", 1796, 601),
    Book("walpole", "Horace Walpole", "The Castle of Otranto", 1764, 696),
    Book("burney", "Frances Burney", "Evelina", 1778, 6053),
    Book("smollett", "Tobias Smollett", "The Expedition of Humphry Clinker", 1771, 2160),
    Book("cbronte", "Charlotte Brontë", "Jane Eyre", 1847, 1260),
    Book("ebronte", "Emily Brontë", "Wuthering Heights", 1847, 768),
    Book("eliot", "George Eliot", "Silas Marner", 1861, 550),
    Book("gaskell", "Elizabeth Gaskell", "North and South", 1855, 4276),
    Book("dickens", "Charles Dickens", "A Tale of Two Cities", 1859, 98),
    Book("wilde", "Oscar Wilde", "The Picture of Dorian Gray", 1890, 174),
    # The first corpus: known, so its file is recognised and its eval keeps the five prompts of its preset.
    Book(
        "shelley",
        "Mary Shelley",
        "Frankenstein",
        1818,
        84,
        reference=False,
        prompts=(
            "It was on a dreary night of November",
            "I beheld the wretch",
            "My dear Elizabeth,",
            "The moon rose over the glacier, and",
            "When I awoke, the creature",
        ),
    ),
)
BY_KEY = {b.key: b for b in BOOKS}


def slug(text: str) -> str:
    """ASCII lowercase with underscores: 'Charlotte Brontë' -> 'charlotte_bronte'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


@dataclass
class Identity:
    """The corpus's author and title, and how they were found (for the report)."""

    key: str  # short author key, comparable with the reference set's
    author: str
    title: str
    found_by: str
    prompts: list[str] = field(default_factory=list)
    named: bool = True  # False: no author was found, so ``author`` is "the author of <title>"


def author_key(name: str) -> str:
    """The key of an author name: a known author's own key, else the slug of the surname."""
    s = slug(name)
    for b in BOOKS:
        if s in (b.key, slug(b.author)):
            return b.key
    words = [w for w in s.split("_") if w]
    return words[-1] if words else "author"


_HEADER = re.compile(r"^\s*(Title|Author)\s*:\s*(.+?)\s*$", re.M)


def header_fields(text: str) -> dict[str, str]:
    """``title`` and ``author`` from a Project Gutenberg header in the first 6,000 characters of ``text``."""
    return {k.lower(): v for k, v in _HEADER.findall(text[:6000])}


def _from_header(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", errors="replace") as fh:
        return header_fields(fh.read(6000))


def known_book(path: Path) -> Book | None:
    """A known book by file name: pg<id>.txt, author__title.txt, or a name starting with the title's slug."""
    stem = slug(Path(path).stem)
    for b in BOOKS:
        if stem in (f"pg{b.gutenberg_id}", slug(Path(b.file).stem)) or stem.startswith(slug(b.title)):
            return b
    return None


def identify(source: str | Path | None, author: str | None = None, title: str | None = None) -> Identity:
    """Author and title of the corpus at ``source`` (a file, or a folder or manifest of several books); explicit
    values win, each field on its own."""
    works = resolve_works(source)
    if works is not None:
        return check_works(works, author, title)[0]
    path = Path(source) if source else Path("corpus")
    header = _from_header(path)
    book = known_book(path)
    stem = path.stem
    pair = stem.split("__", 1) if "__" in stem else None
    guesses = [
        ("config", author, title),
        ("Gutenberg header", header.get("author"), header.get("title")),
        ("known book", book.author if book else None, book.title if book else None),
        ("file name", pair[0] if pair else None, pair[1].replace("_", " ").title() if pair else None),
    ]
    found_author = next(((how, a) for how, a, _ in guesses if a), None)
    found_title = next(((how, t) for how, _, t in guesses if t), None)
    the_title = found_title[1] if found_title else stem.replace("_", " ").replace("-", " ").strip() or "the corpus"
    if found_author:
        name = found_author[1]
        name = BY_KEY[name].author if name in BY_KEY else name  # a file named austen__... means Jane Austen
    else:
        name = f"the author of {the_title}"
    key = author_key(name) if found_author else "author"
    how = (found_author or found_title or ("file name", None))[0]
    same_book = book is not None and slug(book.author) == slug(name) and slug(book.title) == slug(the_title)
    prompts = list(book.prompts) if same_book else []
    return Identity(key=key, author=name, title=the_title, found_by=how, prompts=prompts, named=bool(found_author))


def check_works(works: Works, author: str | None = None, title: str | None = None) -> tuple[Identity, list[Identity]]:
    """(the corpus's identity, each book's) for several books. The author is one across the books: the one given,
    else the manifest's, else the first book's that names one; a book by another author is an error unless the
    manifest sets ``mixed_authors: true``. The title lists the books unless one is given."""
    each = [identify(b.path, b.author, b.title) for b in works.books]
    named = [w for w in each if w.named]
    name = author or works.author or (named[0].author if named else None)
    titles = [w.title for w in each]
    the_title = (
        title or works.title or (titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1])
    )
    if name is None:
        return Identity("author", f"the author of {the_title}", the_title, "books", named=False), each
    name = BY_KEY[name].author if name in BY_KEY else name
    key = author_key(name)
    if not works.mixed_authors:
        for book, w in zip(works.books, each, strict=True):
            if w.named and w.key != key:
                raise ShelleyError(
                    f"{book.path.name} is by {w.author}, but the corpus {works.source} is by {name}; remove it, or "
                    "list the books in a corpus.yaml with `mixed_authors: true`"
                )
    how = "config" if author else "corpus manifest" if works.author else "the books"
    return Identity(key, name, the_title, how), each


def corpus_prompts(texts: list[str], n: int = 5, words: int = 8) -> list[str]:
    """Eval prompts taken from the corpus itself: the first ``words`` words of ``n`` paragraphs spread evenly
    through ``texts`` (the validation split), skipping headings and one-line fragments."""
    usable = [t for t in texts if len(t.split()) > words]  # a heading or a fragment makes a poor prompt
    usable = usable or [t for t in texts if t.split()]
    if not usable:
        return [""]
    step = len(usable) / min(n, len(usable))
    return [" ".join(usable[int(i * step)].split()[:words]) for i in range(min(n, len(usable)))]


# ---------------------------------------------------------------------------------------------- reference


@dataclass
class ReferenceBook:
    key: str
    author: str
    title: str
    path: Path
    text: str


def default_reference_dir(corpus: str | Path | None = None) -> Path:
    """Where the reference set is when none is named: ``$SHELLEY_DATA_DIR/reference`` when that is set (CI,
    the shared data); else a ``reference/`` folder beside the corpus (next to the file, inside or next to the
    folder, or in its parent), as the shared data lays it out; else ``$SHELLEY_HOME/reference``, where
    ``shelley data fetch reference`` puts it."""
    if os.environ.get("SHELLEY_DATA_DIR"):
        return Path(os.environ["SHELLEY_DATA_DIR"]) / "reference"
    if corpus:
        where = Path(corpus).expanduser().resolve()
        near = [where / "reference"] if where.is_dir() else []
        near += [where.parent / "reference", where.parent.parent / "reference"]
        for folder in near:
            if (folder / "MANIFEST.json").is_file():
                return folder

    return shelley_home() / "reference"


def _manifest(folder: Path) -> list[dict]:
    path = folder / "MANIFEST.json"
    if path.is_file():
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ShelleyError(f"{path} is not valid JSON; fix it or fetch the set again") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "file" in r and "author" in r for r in rows):
            raise ShelleyError(f"{path} must be a list of {{file, author, title}} entries; fetch the set again")
        return rows
    return [{"file": p.name, "author": p.stem.split("__")[0]} for p in sorted(folder.glob("*__*.txt"))]


def load_reference(folder: str | Path) -> list[ReferenceBook]:
    """The books of a reference folder, each read as UTF-8 text; a one-line error for anything unusable."""
    folder = Path(folder)
    fix = f"get it with `shelley data fetch reference --out {folder}` or point eval.reference_dir elsewhere"
    if not folder.is_dir():
        raise ShelleyError(f"reference set not found at {folder}; {fix}")
    rows = _manifest(folder)
    if not rows:
        raise ShelleyError(f"reference set {folder} is empty (no MANIFEST.json, no author__title.txt files); {fix}")
    books = []
    for r in rows:
        path = folder / r["file"]
        if not path.is_file():
            raise ShelleyError(f"reference book {path} is listed in MANIFEST.json but missing; {fix}")
        raw = path.read_bytes()
        if b"\x00" in raw[:4096]:
            raise ShelleyError(f"reference book {path} is not text (binary data); remove it from the set")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ShelleyError(
                f"reference book {path} is not UTF-8 text; convert it or remove it from the set"
            ) from None
        key = slug(str(r["author"])) or "author"
        known = BY_KEY.get(key)
        author = known.author if known else str(r["author"])
        title = str(r.get("title") or (known.title if known else path.stem))
        books.append(ReferenceBook(key, author, title, path, text))
    return books


def fetch_reference(out: Path, *, overwrite: bool = False, on_book=None) -> Path:
    """Download the default reference set from Project Gutenberg into ``out`` (written as one folder, atomically):
    each book with its Gutenberg header and licence cut, and a MANIFEST.json with words and SHA-256."""
    from shelley.data.fetch import download_gutenberg
    from shelley.data.ingest import strip_gutenberg

    out = Path(out)
    check_output_dir(out, overwrite=overwrite)
    manifest = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for b in (b for b in BOOKS if b.reference):
            if on_book:
                on_book(b)
            raw = download_gutenberg(b.gutenberg_id).decode("utf-8", errors="replace")
            got = header_fields(raw).get("title", "")
            if got and slug(b.title) not in slug(got) and slug(got) not in slug(b.title):
                raise ShelleyError(
                    f"Gutenberg ebook {b.gutenberg_id} is {got!r}, not {b.title!r}; report this (the id table is wrong)"
                )
            text = strip_gutenberg(raw)
            atomic_write_text(tmp / b.file, text)
            manifest.append(
                {
                    "file": b.file,
                    "author": b.key,
                    "title": b.title,
                    "year": b.year,
                    "source": f"Project Gutenberg ebook #{b.gutenberg_id}",
                    "words": len(text.split()),
                    "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                }
            )
        write_json(tmp / "MANIFEST.json", manifest)
    return out


def fetch_books(ebook_ids: list[int], out: Path, *, overwrite: bool = False, on_book=None) -> list[dict]:
    """Download several Project Gutenberg ebooks into the folder ``out`` (written as one folder, atomically) with a
    MANIFEST.json naming each book's file, author and title (from its header): a corpus of an author's works that
    ``shelley run out/`` reads book by book. Returns the manifest."""
    from shelley.data.fetch import download_gutenberg
    from shelley.data.ingest import strip_gutenberg

    doubles = sorted({i for i in ebook_ids if ebook_ids.count(i) > 1})
    if doubles:
        raise ShelleyError(f"ebook {doubles[0]} is listed twice; list each ebook once")
    out = Path(out)
    check_output_dir(out, overwrite=overwrite)
    manifest = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for gid in ebook_ids:
            if on_book:
                on_book(gid)
            raw = download_gutenberg(gid).decode("utf-8", errors="replace")
            head = header_fields(raw)
            atomic_write_text(tmp / f"pg{gid}.txt", raw)  # as `fetch gutenberg` keeps it: the header is cut at ingest
            text = strip_gutenberg(raw)
            manifest.append(
                {
                    "file": f"pg{gid}.txt",
                    "author": head.get("author"),
                    "title": head.get("title") or f"Project Gutenberg ebook #{gid}",
                    "source": f"Project Gutenberg ebook #{gid}",
                    "words": len(text.split()),
                    "sha256": hashlib.sha256(raw.encode("utf-8")).hexdigest(),
                }
            )
        write_json(tmp / "MANIFEST.json", manifest)
    return manifest
