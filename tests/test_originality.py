"""The originality guard: copied spans, their location, n-gram shares, and the cached index."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shelley.errors import ShelleyError
from shelley.eval.originality import CorpusIndex, corpus_hash, index_for_rows, words

CORPUS = [
    "The ship lay at anchor while the wind rose over the grey water and the men sang below the deck.",
    "I was born in a quiet town by the lake, where my father kept a study full of old books and maps.",
    "The storm broke at midnight; lightning split the old oak at the end of the garden and I ran out.",
    "My mother taught me letters and patience, and both served me ill in the years that followed.",
]


def _rows(texts):
    return [{"text": t, "split": "train", "row": i, "section": f"Chapter {i + 1}"} for i, t in enumerate(texts)]


def test_planted_twenty_word_copy_is_found_with_its_location():
    rng = random.Random(0)
    filler = ["quantum", "bicycles", "negotiate", "marmalade", "under", "fluorescent", "committees"]
    source = words(CORPUS[1])[2:22]  # 20 consecutive words of row 1
    generated = " ".join(rng.choices(filler, k=15) + source + rng.choices(filler, k=10))
    result = CorpusIndex.build(_rows(CORPUS)).check(generated)
    assert result["longest_span"] == 20
    assert result["location"]["row"] == 1 and result["location"]["section"] == "Chapter 2"
    assert result["location"]["copied"] == " ".join(source)
    # 20 copied words hold 13 of the text's 8-grams.
    assert result["ngram_share"] == pytest.approx(13 / (45 - 7))


def test_original_text_copies_nothing_long():
    result = CorpusIndex.build(_rows(CORPUS)).check("Electric eels compose sonnets about the moon in winter.")
    assert result["longest_span"] <= 2 and result["ngram_share"] == 0.0


def test_spans_do_not_run_across_two_corpus_rows():
    # The end of row 0 followed by the start of row 1 is contiguous in the concatenation, but not in the book.
    text = "the men sang below the deck i was born in a quiet town"
    result = CorpusIndex.build(_rows(CORPUS)).check(text)
    assert result["longest_span"] == len(words("i was born in a quiet town"))


def _brute_longest(corpus_rows: list[list[int]], query: list[int]) -> int:
    best = 0
    for row in corpus_rows:
        for i in range(len(query)):
            for j in range(len(row)):
                k = 0
                while i + k < len(query) and j + k < len(row) and query[i + k] == row[j + k]:
                    k += 1
                best = max(best, k)
    return best


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=25), min_size=1, max_size=4),
    st.lists(st.integers(0, 4), min_size=0, max_size=25),
)
def test_longest_span_equals_brute_force(corpus_rows, query):
    # A 4-word alphabet makes long repeated spans common: the hard case for the automaton.
    vocab = ["w" + str(i) for i in range(5)]
    rows = _rows([" ".join(vocab[t] for t in r) for r in corpus_rows])
    got = CorpusIndex.build(rows).check(" ".join(vocab[t] for t in query))["longest_span"]
    assert got == _brute_longest(corpus_rows, query)


def test_index_is_cached_and_tied_to_its_corpus(tmp_path):
    path = tmp_path / "index.npz"
    first = index_for_rows(_rows(CORPUS), path)
    assert path.exists()
    mtime = path.stat().st_mtime_ns
    again = index_for_rows(_rows(CORPUS), path)
    assert path.stat().st_mtime_ns == mtime  # loaded, not rebuilt
    probe = CORPUS[2][:60]
    assert again.check(probe) == first.check(probe)
    with pytest.raises(ShelleyError, match="different corpus"):
        index_for_rows(_rows(CORPUS[:2]), path)


def test_corpus_hash_changes_with_text():
    assert corpus_hash(_rows(CORPUS)) != corpus_hash(_rows(CORPUS[::-1]))


def test_unreadable_index_is_a_clean_error(tmp_path):
    bad = tmp_path / "index.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ShelleyError, match="unreadable"):
        CorpusIndex.load(bad)
