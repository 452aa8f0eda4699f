"""Read a corpus into snippets: CSV (column ``text``), plain text, Project Gutenberg books and JSONL.

Books are cut into snippets at paragraphs, long paragraphs split at sentence ends to a word budget, and
every snippet keeps the chapter/letter it came from so the train/validation split can hold whole chapters
out (see ``split.py``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from shelley.errors import ShelleyError

FORMATS = ("csv", "txt", "gutenberg", "jsonl")


@dataclass
class Snippet:
    text: str
    row: int  # position in the source (0-based), kept so every output row can be traced back
    section: str | None = None  # e.g. "Chapter 10", "Letter 2"; None before the first heading


# --------------------------------------------------------------------------------------------- reading


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Read a whole text file, turning every way it can be unreadable into one clear ShelleyError."""
    path = Path(path)
    if not path.exists():
        raise ShelleyError(f"corpus file not found: {path}; check the path")
    if path.is_dir():
        raise ShelleyError(f"{path} is a directory; pass a corpus file (.csv, .txt or .jsonl)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ShelleyError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    if not raw.strip():
        raise ShelleyError(f"corpus file {path} is empty; pass a file with text in it")
    if b"\x00" in raw[:65536] and not encoding.lower().startswith("utf-16"):
        raise ShelleyError(f"{path} looks like a binary file (it has NUL bytes); pass a text corpus")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ShelleyError(
            f"{path} is not valid {encoding} (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            f"pass --encoding {_guess_encoding(raw)}"
        ) from None
    except LookupError:
        raise ShelleyError(f"unknown encoding {encoding!r}; pass a Python codec name such as utf-8 or cp1252") from None
    return text.removeprefix("\ufeff")  # a UTF-8 BOM is not text


def _guess_encoding(raw: bytes) -> str:
    from charset_normalizer import from_bytes

    best = from_bytes(raw[:200_000]).best()
    enc = best.encoding if best is not None else None
    # charset_normalizer reports utf_8 when a file is *mostly* UTF-8 with a few bad bytes; cp1252 reads any byte.
    if not enc or enc.replace("_", "-").lower() in {"utf-8", "ascii"}:
        return "cp1252"
    return enc.replace("_", "-")


def detect_format(path: Path, text: str | None = None) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    if suffix in {".txt", ".text", ".md", ""}:
        if text is not None and find_gutenberg_markers(text) != (None, None):
            return "gutenberg"
        return "txt"
    raise ShelleyError(
        f"cannot tell the format of {path} from its extension {suffix!r}; pass --format csv, txt, gutenberg or jsonl"
    )


def read_corpus(
    path: str | Path,
    *,
    fmt: str = "auto",
    text_column: str = "text",
    encoding: str = "utf-8",
    max_words: int = 80,
) -> tuple[list[Snippet], str]:
    """Read any supported corpus file; returns the snippets and the format that was used."""
    path = Path(path)
    text = read_text(path, encoding)
    if fmt == "auto":
        fmt = detect_format(path, text)
    if fmt not in FORMATS:
        raise ShelleyError(f"unknown corpus format {fmt!r}; use one of: auto, {', '.join(FORMATS)}")
    if fmt == "csv":
        snippets = parse_csv(text, text_column, source=str(path))
    elif fmt == "jsonl":
        snippets = parse_jsonl(text, text_column, source=str(path))
    else:
        if fmt == "gutenberg":
            text = strip_gutenberg(text)
        snippets = snippets_from_book(text, max_words=max_words)
    if not snippets:
        raise ShelleyError(f"no text rows found in {path}; check the file and --format")
    return assign_sections(snippets), fmt


def parse_csv(text: str, column: str = "text", source: str = "<csv>") -> list[Snippet]:
    # Some corpora keep whole chapters in one cell; the csv module's default 128 KB field cap would reject them.
    csv.field_size_limit(2**31 - 1)
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames or []
        if column not in header:
            found = ", ".join(repr(c) for c in header) or "none"
            raise ShelleyError(
                f"{source} has no {column!r} column (columns found: {found}); "
                f"pass --text-column NAME or add a {column!r} header"
            )
        out = []
        for i, rec in enumerate(reader):
            value = rec.get(column)
            out.append(Snippet(text=value if isinstance(value, str) else "", row=i))
    except csv.Error as exc:
        raise ShelleyError(f"{source} is not valid CSV (line {reader.line_num}: {exc}); fix the quoting") from None
    return out


def parse_jsonl(text: str, field: str = "text", source: str = "<jsonl>") -> list[Snippet]:
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            raise ShelleyError(f"{source} line {lineno} is not valid JSON ({msg}); one JSON object per line") from None
        if not isinstance(rec, dict) or field not in rec:
            keys = ", ".join(repr(k) for k in rec) if isinstance(rec, dict) else type(rec).__name__
            raise ShelleyError(
                f"{source} line {lineno} has no {field!r} field (found: {keys}); pass --text-column NAME"
            )
        value = rec[field]
        if value is not None and not isinstance(value, str):
            raise ShelleyError(f"{source} line {lineno}: field {field!r} must be a string, got {type(value).__name__}")
        out.append(Snippet(text=value or "", row=len(out)))
    return out


# ------------------------------------------------------------------------------------------ Gutenberg

_START_RE = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG EBOOK.*?\*{3}\s*$", re.I | re.M)
_END_RE = re.compile(r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG EBOOK.*?\*{3}\s*$", re.I | re.M)
# Older files end the text with a plain line instead of the *** marker.
_OLD_END_RE = re.compile(r"^\s*End of (the )?Project Gutenberg'?s? .*$", re.I | re.M)


def find_gutenberg_markers(text: str) -> tuple[int | None, int | None]:
    start = _START_RE.search(text)
    end = _END_RE.search(text) or _OLD_END_RE.search(text)
    return (start.end() if start else None, end.start() if end else None)


def strip_gutenberg(text: str) -> str:
    """Keep only the book: drop the Project Gutenberg header before START and the licence after END."""
    start, end = find_gutenberg_markers(text)
    body = text[start or 0 : end if end is not None else len(text)]
    if end is None:
        # No END marker: still cut a trailing licence if one is there.
        lic = re.search(r"^\s*\*{3}.*?PROJECT GUTENBERG.*?LICENSE", body, re.I | re.M)
        if lic:
            body = body[: lic.start()]
    return body.strip("\r\n") + "\n"


# ------------------------------------------------------------------------------------- book snippets

# A sentence ends at . ! or ? (plus closing quotes/brackets) before whitespace; abbreviations are guarded.
_SENT_END_RE = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+")
_ABBREV = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "st",
    "mt",
    "messrs",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "vol",
    "ch",
    "no",
    "viz",
    "etc",
    "i.e",
    "e.g",
    "m",
}


def split_sentences(paragraph: str) -> list[str]:
    sentences, start = [], 0
    for m in _SENT_END_RE.finditer(paragraph):
        before = paragraph[start : m.start()].rstrip("\"'”’)]")
        last_word = before.rsplit(None, 1)[-1].rstrip(".!?").lower() if before.split() else ""
        if last_word in _ABBREV or (len(last_word) == 1 and last_word.isalpha() and before.endswith(".")):
            continue  # "Mrs. Saville", "R. Walton": not a sentence end
        sentences.append(paragraph[start : m.end()].strip())
        start = m.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def split_long_paragraph(paragraph: str, max_words: int) -> list[str]:
    """Pack whole sentences into chunks of at most ``max_words`` words.

    A single sentence longer than the budget is split at semicolons or colons, and only as a last resort
    between words, so every chunk fits the budget.
    """
    if len(paragraph.split()) <= max_words:
        return [paragraph]
    pieces: list[str] = []
    for sentence in split_sentences(paragraph):
        if len(sentence.split()) <= max_words:
            pieces.append(sentence)
            continue
        for clause in re.split(r"(?<=[;:])\s+", sentence):
            words = clause.split()
            pieces.extend(" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words))
    chunks: list[str] = []
    current: list[str] = []
    count = 0
    for piece in pieces:
        n = len(piece.split())
        if current and count + n > max_words:
            chunks.append(" ".join(current))
            current, count = [], 0
        current.append(piece)
        count += n
    if current:
        chunks.append(" ".join(current))
    return chunks


def split_paragraphs(text: str) -> list[str]:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = re.split(r"\n\s*\n", text)
    # Inside a paragraph, hard line breaks are only the typesetter's: join them with spaces.
    return [" ".join(p.split()) for p in paragraphs if p.strip()]


def snippets_from_book(text: str, max_words: int = 80) -> list[Snippet]:
    out: list[Snippet] = []
    for paragraph in split_paragraphs(text):
        for chunk in split_long_paragraph(paragraph, max_words):
            out.append(Snippet(text=chunk, row=len(out)))
    return out


# --------------------------------------------------------------------------------------------- sections

HEADING_RE = re.compile(
    r"^\s*(chapter|letter|book|part|volume|canto|act|scene)\s+([0-9]+|[ivxlcdm]+|[a-z]+)\s*[.:]?\s*$", re.I
)
BARE_NUMBER_RE = re.compile(r"^\s*[0-9]+\s*\.?\s*$")


def is_heading(text: str) -> bool:
    return bool(HEADING_RE.match(text)) and len(text) <= 40


def assign_sections(snippets: list[Snippet]) -> list[Snippet]:
    """Label every snippet with the last heading above it ("Chapter 10", "Letter 2").

    Some Gutenberg transcriptions break "Chapter 10" into a heading "Chapter 1" and a paragraph "0";
    a bare number right after a numbered heading is read as the rest of that number.
    """
    section: str | None = None
    prev_heading = False
    out = []
    for s in snippets:
        text = s.text.strip()
        if is_heading(text):
            section = " ".join(text.rstrip(".:").split()).title()
            prev_heading = True
        elif prev_heading and BARE_NUMBER_RE.match(text) and section and section[-1].isdigit():
            section = section + text.strip().rstrip(".")
            prev_heading = False
        else:
            prev_heading = False
        out.append(Snippet(text=s.text, row=s.row, section=section))
    return out


def text_argument(text: str) -> tuple[str, str]:
    """(name, body) of a TEXT argument: a file path, or the text itself in quotes."""
    path = Path(text)
    is_file = len(text) < 4096 and "\n" not in text and path.is_file()
    body = read_text(path) if is_file else text
    if not body.strip():
        raise ShelleyError(f"the text {path.name if is_file else 'given'} is empty; pass a file with text or the text")
    return (path.name if is_file else f"text {len(body.split())} words"), body
