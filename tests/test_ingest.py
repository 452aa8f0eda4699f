from __future__ import annotations

import json

import pytest

from conftest import BOOK_BODY, GUTENBERG, write
from shelley.data.ingest import (
    assign_sections,
    detect_format,
    parse_csv,
    read_corpus,
    snippets_from_book,
    split_long_paragraph,
    split_sentences,
    strip_gutenberg,
)
from shelley.errors import ShelleyError


def test_csv_reads_text_column_and_keeps_other_columns_out(tmp_path):
    p = write(tmp_path / "c.csv", 'id,text\n1,"Hello, world."\n2,"Second ""quoted"" row"\n3,\n')
    snippets, fmt = read_corpus(p)
    assert fmt == "csv"
    assert [s.text for s in snippets] == ["Hello, world.", 'Second "quoted" row', ""]
    assert [s.row for s in snippets] == [0, 1, 2]


def test_csv_other_column_name(tmp_path):
    p = write(tmp_path / "c.csv", "passage\nOne.\nTwo.\n")
    snippets, _ = read_corpus(p, text_column="passage")
    assert [s.text for s in snippets] == ["One.", "Two."]


def test_csv_without_text_column_lists_columns(tmp_path):
    p = write(tmp_path / "c.csv", "id,body\n1,hello\n")
    with pytest.raises(ShelleyError, match=r"no 'text' column \(columns found: 'id', 'body'\)"):
        read_corpus(p)


def test_jsonl_reads_text_field(tmp_path):
    p = write(
        tmp_path / "c.jsonl",
        json.dumps({"text": "One."}) + "\n\n" + json.dumps({"text": "Two.", "x": 1}) + "\n",
    )
    snippets, fmt = read_corpus(p)
    assert fmt == "jsonl"
    assert [s.text for s in snippets] == ["One.", "Two."]


def test_jsonl_bad_line_names_line_number(tmp_path):
    p = write(tmp_path / "c.jsonl", '{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(ShelleyError, match="line 2 is not valid JSON"):
        read_corpus(p)
    p2 = write(tmp_path / "d.jsonl", '{"body": "ok"}\n')
    with pytest.raises(ShelleyError, match=r"line 1 has no 'text' field \(found: 'body'\)"):
        read_corpus(p2)


def test_plain_text_book_is_cut_into_paragraph_snippets_with_sections(tmp_path):
    p = write(tmp_path / "book.txt", BOOK_BODY.replace("\n", "\r\n"))  # CRLF, as the Gutenberg file has
    snippets, fmt = read_corpus(p)
    assert fmt == "txt"
    texts = [s.text for s in snippets]
    assert texts[0] == "Letter 1"
    assert "The ship lay at anchor while the wind rose over the grey water and the men sang below." in texts[3]
    # Hard line breaks inside a paragraph become spaces, CRs vanish.
    assert all("\r" not in t and "\n" not in t for t in texts)
    sections = {s.text[:20]: s.section for s in snippets}
    assert sections["The ship lay at anch"] == "Letter 1"
    assert sections["I was born in a quie"] == "Chapter 1"
    # "Chapter 1" followed by a bare "0" is chapter 10, as the Gutenberg transcription breaks it.
    assert sections["The storm broke at m"] == "Chapter 10"


def test_gutenberg_header_and_licence_are_stripped(tmp_path):
    p = write(tmp_path / "pg.txt", GUTENBERG)
    assert detect_format(p, GUTENBERG) == "gutenberg"
    snippets, fmt = read_corpus(p)
    assert fmt == "gutenberg"
    joined = " ".join(s.text for s in snippets)
    assert "Project Gutenberg" not in joined and "LICENSE" not in joined and "START" not in joined
    assert joined.startswith("Letter 1")
    assert snippets[-1].text.endswith("it was electricity.")


def test_strip_gutenberg_without_markers_keeps_text():
    assert strip_gutenberg("Just a book.\n").strip() == "Just a book."


def test_sentence_split_respects_abbreviations():
    text = 'I wrote to Mrs. Saville at St. Petersburgh. She answered! "Did she?" Yes.'
    assert split_sentences(text) == [
        "I wrote to Mrs. Saville at St. Petersburgh.",
        "She answered!",
        '"Did she?"',
        "Yes.",
    ]


def test_long_paragraph_split_at_sentence_ends_within_budget():
    sentence = "The wind rose over the water and the men sang below the deck. "
    para = (sentence * 12).strip()  # 12 sentences x 13 words
    chunks = split_long_paragraph(para, max_words=40)
    assert all(len(c.split()) <= 40 for c in chunks)
    assert all(c.endswith(".") for c in chunks)  # cut at sentence ends
    assert " ".join(chunks) == para  # nothing lost


def test_single_overlong_sentence_is_still_cut_to_budget():
    para = " ".join(f"w{i}" for i in range(250))
    chunks = split_long_paragraph(para, max_words=80)
    assert [len(c.split()) for c in chunks] == [80, 80, 80, 10]


def test_book_max_words_is_configurable(tmp_path):
    para = "One two three four five. " * 20
    short = snippets_from_book(para, max_words=10)
    long = snippets_from_book(para, max_words=100)
    assert len(short) == 10 and len(long) == 1


def test_sections_from_csv_heading_rows():
    snippets = parse_csv("text\nLetter 1\nA.\nChapter 1\n0\nB.\n")
    labelled = assign_sections(snippets)
    assert [s.section for s in labelled] == ["Letter 1", "Letter 1", "Chapter 1", "Chapter 10", "Chapter 10"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "corpus file not found"),
        ("empty.txt", b"", "is empty"),
        ("blank.txt", b"  \n\n ", "is empty"),
        ("bin.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks like a binary file"),
        ("latin.txt", "Caf\u00e9 cr\u00e8me".encode("latin-1"), "is not valid utf-8"),
        ("bad.csv", b'text\n"unclosed quote\nmore\n', "is not valid CSV"),
        ("book.pdf", b"hello", "cannot tell the format"),
    ],
)
def test_bad_corpus_files(tmp_path, name, content, message):
    p = tmp_path / name
    if content is not None:
        write(p, content)
    with pytest.raises(ShelleyError, match=message) as info:
        read_corpus(p)
    assert "\n" not in str(info.value)


def test_non_utf8_error_suggests_an_encoding_that_works(tmp_path):
    p = write(tmp_path / "latin.txt", ("Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e. " * 20).encode("cp1252"))
    with pytest.raises(ShelleyError, match=r"pass --encoding (\S+)") as info:
        read_corpus(p)
    suggested = str(info.value).rsplit("--encoding ", 1)[1]
    snippets, _ = read_corpus(p, encoding=suggested)  # the suggestion must actually read the file
    assert "Caf\u00e9" in snippets[0].text


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ShelleyError, match="is a directory"):
        read_corpus(tmp_path)


def test_utf8_bom_is_dropped(tmp_path):
    p = write(tmp_path / "b.csv", "\ufefftext\nHello.\n")
    snippets, _ = read_corpus(p)
    assert snippets[0].text == "Hello."
