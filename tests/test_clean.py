from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shelley.data.clean import (
    clean_snippets,
    find_near_duplicates,
    is_noise,
    normalize_dashes,
    normalize_quotes,
)
from shelley.data.ingest import Snippet


def _snips(*texts: str) -> list[Snippet]:
    return [Snippet(text=t, row=i) for i, t in enumerate(texts)]


def test_quotes_and_dashes():
    assert normalize_quotes("\u201cYes,\u201d she said, \u2018no\u2019.") == "\"Yes,\" she said, 'no'."
    assert normalize_dashes("There--for with your leave -- there") == "There\u2014for with your leave\u2014there"
    assert normalize_dashes("a \u2013 b\u2014c") == "a\u2014b\u2014c"


def test_noise_rows():
    for noise in ["Chapter 4", "Letter 2", "CHAPTER XII", "Chapter 1.", "0", "12"]:
        assert is_noise(noise), noise
    for text in ["Chapter 4 began with a storm that lasted all night.", "I was born in Geneva.", "Yes."]:
        assert not is_noise(text), text


def test_each_step_is_counted():
    rows = _snips(
        "  A  quiet   night.  ",  # whitespace changed
        "\u201cQuoted\u201d line here.",  # quotes changed
        "Dash--here and there.",  # dash changed
        "",  # empty
        "   ",  # empty after strip
        "Chapter 3",  # noise
        "7",  # noise
        "A quiet night.",  # exact duplicate of row 0 after strip
        "a QUIET night!",  # near duplicate (case/punct) of row 0
        "The wind rose over the grey water and the men sang below deck all night long",
        "The wind rose over the grey water and the men sang below deck all night long too",  # near dup (Jaccard)
        "Something entirely different is written on this row.",
    )
    kept, reports = clean_snippets(rows)
    by_step = {r.step: r for r in reports}
    assert by_step["strip whitespace"].changed == 2
    assert by_step["normalise quotes"].changed == 1
    assert by_step["normalise dashes"].changed == 1
    assert by_step["drop empty rows"].removed == 2
    assert by_step["drop noise rows (bare headings, bare numbers)"].removed == 2
    assert by_step["drop exact duplicates"].removed == 1
    assert by_step["drop near duplicates"].removed == 2
    assert reports[-1].remaining == len(kept) == 5
    assert [s.row for s in kept] == [0, 1, 2, 9, 11]  # first occurrence kept, source rows traceable


def test_cleaning_is_configurable():
    rows = _snips("\u201cHi\u201d--there", "Chapter 1", "x y", "x y z")
    kept, reports = clean_snippets(rows, quotes=False, dashes=False, drop_noise=False, min_words=3, dedup_near=False)
    steps = [r.step for r in reports]
    assert "normalise quotes" not in steps and "normalise dashes" not in steps
    assert [s.text for s in kept] == ["x y z"]


def test_near_duplicates_keep_the_first_and_ignore_unrelated_rows():
    texts = ["alpha beta gamma delta epsilon", "ALPHA, beta gamma delta epsilon!", "one two three four five"]
    assert find_near_duplicates(texts) == {1}
    assert find_near_duplicates(texts, threshold=1.0) == {1}  # same normalised key, whatever the threshold


def _brute_force_near_duplicates(texts: list[str], threshold: float) -> set[int]:
    """The definition, pair by pair: a row is a duplicate when its normalised key was seen, or its word
    3-gram Jaccard with an earlier kept row reaches the threshold."""
    from shelley.data.clean import _shingles, near_duplicate_key

    dup: set[int] = set()
    keys: set[str] = set()
    kept: list[int] = []
    for i, t in enumerate(texts):
        key = near_duplicate_key(t)
        if key in keys:
            dup.add(i)
            continue
        keys.add(key)
        a = _shingles(t)
        for j in kept:
            b = _shingles(texts[j])
            inter = len(a & b)
            if a and inter and inter / (len(a) + len(b) - inter) >= threshold:
                dup.add(i)
                break
        if i not in dup:
            kept.append(i)
    return dup


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.lists(
            st.sampled_from(["the", "night", "storm", "ship", "wind", "grey", "sea", "I", "ran"]),
            min_size=0,
            max_size=9,
        ).map(" ".join),
        max_size=14,
    ),
    threshold=st.sampled_from([0.5, 0.6, 0.8, 1.0]),
)
def test_near_duplicate_search_equals_the_pairwise_definition(rows, threshold):
    # max_postings large: every shared 3-gram is searched, so the index must find exactly the brute-force set.
    assert find_near_duplicates(rows, threshold=threshold, max_postings=10**6) == _brute_force_near_duplicates(
        rows, threshold
    )
