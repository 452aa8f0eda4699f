"""The scene measures on hand-made texts with known values, and the pre-registered scene rule."""

from __future__ import annotations

import pytest

from shelley.eval.originality import CorpusIndex
from shelley.eval.scenes import (
    NameFinder,
    author_windows,
    distinct_2,
    gzip_ratio,
    longest_self_repeat,
    repeated_4gram_share,
    scene_measures,
    scene_rule,
    summarize,
)

PROSE = (
    "The lamp burned low while the rain beat upon the shutters. I walked along the shore and thought of home, "
    "of my father and of the fields where we had played as children. No word came from the village; yet the "
    "bells rang at every hour of the night, and I could not sleep."
)
LOOP = "and the wind howled over the dark water while the stars went out one by one"


def test_counts_on_known_texts():
    assert repeated_4gram_share("a b c d a b c d") == pytest.approx(1 - 4 / 5)  # 5 four-grams, 4 distinct
    assert distinct_2("a b a b a") == pytest.approx(2 / 4)
    assert longest_self_repeat("a b c x a b c y") == 3
    assert longest_self_repeat("one two three four") == 0
    assert longest_self_repeat("a a a a a") == 4  # overlapping runs count: "a a a a" stands at 0 and 1


def test_a_planted_loop_is_found():
    clean = scene_measures(PROSE)
    looped = scene_measures(PROSE + " " + LOOP + ", " + LOOP + ".")
    assert not clean["loops"] and clean["longest_self_repeat"] < 12
    assert looped["loops"] and looped["longest_self_repeat"] == len(LOOP.split())
    assert looped["repeated_4gram_share"] > clean["repeated_4gram_share"] == 0.0
    assert gzip_ratio(LOOP * 20) < gzip_ratio(PROSE) < 1


def test_a_text_against_itself_copies_everything():
    index = CorpusIndex.build([{"text": PROSE, "split": "train", "row": 0, "section": None}])
    from shelley.eval.originality import words

    assert scene_measures(PROSE, index=index)["longest_copied"] == len(words(PROSE)) == 54  # all of it, one span


def test_name_churn_counts_names_not_sentence_openers():
    names = NameFinder(["the smith and the cottage", "I saw the fields"])
    text = (
        "Then Victor came. He met Elizabeth and Clerval by the lake, and Smith the smith spoke. "
        '"Where is Justine?" she asked.\n\nWalton wrote.'
    )
    assert names.names(text) == {"Victor", "Elizabeth", "Clerval", "Justine"}  # not Then, Smith, Where, Walton
    assert names.per_1000(text) == pytest.approx(1000 * 4 / len(text.split()))


def test_author_windows_are_length_matched_and_spread():
    paras = [f"para {i} " + " ".join(f"w{i}x{j}" for j in range(48)) for i in range(40)]
    wins = author_windows(paras, 200, 4)
    assert len(wins) == 4 and all(len(w.split()) == 200 for w in wins)
    assert wins[0].startswith("para 0") and wins[-1].endswith("w39x47")
    assert author_windows(paras[:2], 200, 4) == []  # not enough text


def _group(n, **overrides):
    row = {"loops": False, "repeated_4gram_share": 0.002, "distinct_2": 0.9, "gzip_ratio": 0.46,
           "longest_self_repeat": 5, "words": 1000, "longest_copied": 8, "to_author": True} | overrides  # fmt: skip
    return summarize([dict(row) for _ in range(n)])


def test_scene_rule_passes_and_fails_on_each_point():
    author = _group(10, longest_copied=1000)
    ok = scene_rule(_group(10, to_author=False), _group(10), author)
    assert ok["pass"] and ok["attribution_checked"]
    assert not scene_rule(_group(10, to_author=False), _group(10, loops=True), author)["pass"]
    assert not scene_rule(_group(10, to_author=False), _group(10, repeated_4gram_share=0.005), author)["pass"]
    assert not scene_rule(_group(10, to_author=False), _group(10, distinct_2=0.85), author)["pass"]
    assert not scene_rule(_group(10, to_author=False), _group(10, longest_copied=13), author)["pass"]
    assert not scene_rule(_group(10, to_author=False), _group(10, to_author=False), author)["pass"]
    assert not scene_rule(_group(10), _group(10), author)["pass"]  # the base model may not sound like the author
