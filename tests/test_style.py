"""Stylometry: Burrows' Delta and the surface profile."""

from __future__ import annotations

import pytest

from shelley.eval.style import StyleModel, chunk_texts, delta_floor, mattr, same_length_windows, sentence_lengths, words

# Fixture texts written for the tests: a pastiche of a Romantic first-person narrator, and two texts in
# other voices (a modern product review, a technical how-to).
GOTHIC = [
    "I had gazed upon the mountains until my heart was filled with a strange awe; and when I turned from them, "
    "the valley beneath seemed to me a tomb, in which all that I had loved was laid. My father spoke to me, "
    "but I heard him not, for my thoughts were fixed upon the wretch whom I had made.",
    "It was in the evening that I arrived at the inn, weary and sick at heart. The moon shone upon the lake, "
    "and I thought of Elizabeth, of her gentle voice, of the hopes which we had shared; yet I could not weep, "
    "for grief had frozen the source of my tears.",
    "Of what a strange nature is knowledge! It clings to the mind, when it has once seized on it, like a lichen "
    "on the rock. I wished sometimes to shake off all thought and feeling; but I learned that there was but one "
    "means to overcome the sensation of pain, and that was death.",
    "We passed a fortnight in these wanderings; the weather was fine, and the scenes which the lake presented "
    "were of a kind to soothe the most melancholy mind. Yet I was not soothed: I was haunted by the memory of "
    "that night, and by the fear of what my enemy might yet do.",
    "When I had recovered my strength I resolved to leave the town, and I wrote to my father to tell him of my "
    "purpose. He consented, though with reluctance, for he feared that I was not yet well; and in a few days I "
    "departed, with a heart that beat with hope and dread.",
    "The sun had set, and the night was calm; but within me raged a tempest which no calm could allay. I wandered "
    "among the rocks until the dawn, and then, exhausted, I sank upon the grass and slept, and in my sleep I saw "
    "again the face of the being whom I had cast away.",
]
GOTHIC_HELD_OUT = (
    "I remained there until the evening, for I could not bring myself to return; and when at length I rose, the "
    "stars were shining upon the lake, and I felt that I was alone in the world, and that my misery was my own. "
    "Yet I did not despair, for I thought of the duty which I owed to those whom I had loved."
)
MODERN = (
    "Okay so you've got your new laptop and you want it to run fast, right? Here's what you do. First, update "
    "everything. Then uninstall the apps you don't use, they're just eating RAM. Honestly it's super easy and "
    "you can do it in like ten minutes. If it's still slow, check your browser extensions, they're usually the "
    "problem. Trust me, you'll thank me later! Let's go step by step and get it done."
)


@pytest.fixture(scope="module")
def style():
    return StyleModel.fit(GOTHIC, n_features=30)


def test_delta_of_a_text_with_itself_is_zero(style):
    assert style.delta(GOTHIC_HELD_OUT, GOTHIC_HELD_OUT) == 0.0


def test_another_author_is_further_than_the_same_voice(style):
    corpus = "\n".join(GOTHIC)
    same = style.delta(GOTHIC_HELD_OUT, corpus)
    other = style.delta(MODERN, corpus)
    assert other > same * 1.3


def test_profile_counts_shelleys_punctuation(style):
    p = style.profile("I wept; I could not speak -- my heart was broken. Then I rose.")
    assert p["per_1000_words"]["semicolon"] > 0 and p["per_1000_words"]["dash"] > 0
    assert p["sentence_length_mean"] == pytest.approx((10 + 3) / 2)


def test_unseen_word_share_flags_anachronisms(style):
    assert style.profile("I checked my smartphone and laptop")["unseen_word_share"] > 0.3
    assert style.profile("I had gazed upon the mountains")["unseen_word_share"] == 0.0


def test_mattr_is_length_robust():
    text = ("the cat sat on a mat and looked at the dog " * 30).split()
    assert mattr(text[:110], 100) == pytest.approx(mattr(text, 100), rel=0.05)
    assert mattr([], 100) == 0.0 and mattr(["a", "b"], 100) == 1.0
    assert mattr([str(i) for i in range(300)], 100) == 1.0  # every window all new words: a ratio, not a count
    assert mattr(["w"] * 300, 100) == pytest.approx(0.01)


def test_sentence_lengths_and_chunks():
    assert sentence_lengths("One two. Three four five! Six?") == [2, 3, 1]
    chunks = chunk_texts(["a " * 300, "b " * 300, "c " * 100], chunk_words=500)
    assert len(chunks) == 1 and "c" in chunks[0]


def test_same_length_windows_cover_the_corpus_at_the_asked_length():
    texts = [f"w{i} " * 10 for i in range(100)]  # 100 snippets of 10 words
    wins = same_length_windows(texts, n_words=50, k=10)
    assert len(wins) == 10
    assert all(len(words(w)) == 50 for w in wins)
    assert wins[0].startswith("w0 ") and wins[-1].startswith("w90 ")  # evenly spaced starts
    # A window that would run off the end is dropped rather than kept short.
    assert len(same_length_windows(texts, n_words=500, k=10)) == 6
    assert same_length_windows([], 50) == [] and same_length_windows(texts, 0) == []


def test_delta_floor_is_the_authors_own_spread(style):
    corpus = GOTHIC * 4
    reference = GOTHIC_HELD_OUT
    floor = delta_floor(style, corpus, reference, n_words=60, k=8)
    assert floor["windows"] == 8
    assert floor["min"] <= floor["median"] <= floor["max"]
    assert floor["max"] == pytest.approx(max(style.delta(w, reference) for w in same_length_windows(corpus, 60, 8)))
    # The author's own windows sit closer to the held-out text than another voice does.
    assert floor["median"] < style.delta(MODERN, reference)
    assert delta_floor(style, [], reference, n_words=60)["windows"] == 0
