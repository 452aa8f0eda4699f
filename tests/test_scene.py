"""Scene writing: length and sentence end, beats in order, the rolling context past the trained window, the
guard re-sampling a planted copy where it occurs, Ctrl-C keeping what was written."""

from __future__ import annotations

import pytest

from conftest import tiny_causal_lm
from shelley.config import GenerationConfig
from shelley.errors import ShelleyError
from shelley.eval.originality import CorpusIndex
from shelley.generate.scene import Scene, TransformersEngine, write_scene

COPY = "the monster stood upon the ice and spoke of the long winter that had frozen every hope within his breast"
FILLER = [
    "The lamp burned low while the rain beat upon the shutters of the old house.",
    "I walked along the shore and thought of home, of my father and of the fields.",
    "No word came from the village, yet the bells rang at every hour of the night.",
    "She answered me with a smile, though her eyes were wet with tears she would not shed.",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.pad_token = tok.eos_token
    return tok


class ScriptEngine:
    """A model that writes a fixed stream of tokens, whatever the context: each draw continues the stream."""

    def __init__(self, tokenizer, sentences: list[str], *, position_limit: int = 4096, paragraph_every: int = 3):
        self.tok, self.position_limit = tokenizer, position_limit
        self.stream: list[int] = []
        for i, s in enumerate(sentences):
            self.stream += tokenizer(s + " ", add_special_tokens=False)["input_ids"]
            if (i + 1) % paragraph_every == 0:
                self.stream.append(tokenizer.eos_token_id)
        self.cursor = 0
        self.contexts: list[int] = []

    def continue_ids(self, ids, max_new, *, seed, ban_eos=False, on_token=None):
        self.contexts.append(len(ids))
        out = []
        while len(out) < max_new:
            t = self.stream[self.cursor % len(self.stream)]
            self.cursor += 1
            out.append(t)
            if t == self.tok.eos_token_id and not (ban_eos and len(out) == 1):
                break
        return out


def sentences(n: int) -> list[str]:
    return [FILLER[i % len(FILLER)].replace("The", f"The {i}th") if i % 4 == 0 else FILLER[i % 4] for i in range(n)]


def test_scene_reaches_the_length_and_ends_at_a_sentence(tokenizer):
    engine = ScriptEngine(tokenizer, sentences(200))
    scene = write_scene(engine, tokenizer, "It was on a dreary night", 150, chunk_tokens=24)
    assert isinstance(scene, Scene)
    assert 150 <= scene.words < 150 + 20  # the first sentence end at or past 150 words
    assert scene.text.endswith(".")
    assert len(scene.paragraphs) >= 3  # end-of-text became paragraph breaks
    assert all(p == " ".join(p.split()) for p in scene.paragraphs)
    assert scene.to_json()["words"] == scene.words and scene.seconds > 0


def test_beats_open_paragraphs_in_order(tokenizer):
    beats = ["Elizabeth came to the door at last.", "Then the candle went out."]
    engine = ScriptEngine(tokenizer, sentences(300), paragraph_every=100)
    scene = write_scene(engine, tokenizer, "Chapter", 300, beats=beats, chunk_tokens=32)
    assert [scene.paragraphs[i].startswith(b) for i, b in zip(scene.beat_paragraphs, beats, strict=True)] == [
        True,
        True,
    ]
    assert scene.beat_paragraphs == sorted(scene.beat_paragraphs) and scene.beat_paragraphs[0] > 0
    # Each beat comes after a full sentence of the model's, near its share of the scene.
    before = " ".join(scene.paragraphs[: scene.beat_paragraphs[0]])
    assert before.endswith(".") and 60 <= len(before.split()) <= 110


def test_rolling_context_runs_past_the_position_limit(tokenizer):
    """A tiny model with 128 positions writes a scene of many more tokens; no draw sees more than it can."""
    model = tiny_causal_lm("llama", len(tokenizer), seed=3, max_positions=128)
    engine = TransformersEngine(model, tokenizer, GenerationConfig(do_sample=False, repetition_penalty=1.0))
    seen = []
    inner = engine.continue_ids

    def spy(ids, n, **kw):
        seen.append(len(ids) + n)
        return inner(ids, n, **kw)

    engine.continue_ids = spy
    notes = []
    scene = write_scene(engine, tokenizer, "The storm", 100, context_tokens=4096, chunk_tokens=16, on_note=notes.append)
    assert scene.context_tokens == 128 - 16
    assert any("clamped" in n for n in notes)  # never silently past the limit
    assert scene.drawn_tokens > 128 and max(seen) <= 128


def test_kv_cache_reuse_gives_the_same_scene(tokenizer):
    """Greedy: keeping the cache between chunks (and cropping it) writes exactly what fresh prefills write."""
    model = tiny_causal_lm("llama", len(tokenizer), seed=5, max_positions=256)
    gen = GenerationConfig(do_sample=False, repetition_penalty=1.0)
    reused = TransformersEngine(model, tokenizer, gen)
    fresh = TransformersEngine(model, tokenizer, gen)
    fresh._reuse_cache = lambda keep: None
    fed = []  # tokens each forward pass was given: the reused cache must spare the prefills
    forward = model.forward
    model.forward = lambda *args, **kw: fed.append(kw["input_ids"].shape[1]) or forward(*args, **kw)
    a = write_scene(reused, tokenizer, "The storm", 100, context_tokens=96, chunk_tokens=16)
    reused_fed, fed[:] = sum(fed), []
    b = write_scene(fresh, tokenizer, "The storm", 100, context_tokens=96, chunk_tokens=16)
    assert a.paragraphs == b.paragraphs and a.drawn_tokens == b.drawn_tokens
    # a silent fallback to fresh prefills (a cache that refuses to crop) would feed as many tokens as `fresh`
    assert reused_fed < sum(fed) / 2, (reused_fed, sum(fed))


def test_guard_resamples_a_planted_copy_where_it_occurs(tokenizer):
    index = CorpusIndex.build(
        [
            {"text": COPY + ".", "split": "train", "row": 0, "section": "Chapter 1"},
            {"text": "x y z", "split": "train", "row": 1, "section": None},
        ]
    )
    script = [*sentences(6), COPY.capitalize() + ".", *sentences(200)[6:]]
    engine = ScriptEngine(tokenizer, script)
    notes = []
    scene = write_scene(
        engine,
        tokenizer,
        "Chapter",
        200,
        index=index,
        original=True,
        max_span=12,
        chunk_tokens=48,
        on_note=notes.append,
    )
    assert scene.guard["resampled"] >= 1 and not scene.guard["gave_up"]
    assert scene.guard["longest_span"] <= 12
    # Text before the copy was kept: the six sentences before it all stand in the scene, in order.
    assert all(s in scene.text for s in sentences(6))
    # Without the guard the same stream copies the whole planted sentence.
    plain = write_scene(ScriptEngine(tokenizer, script), tokenizer, "Chapter", 200, index=index, chunk_tokens=48)
    assert plain.guard["longest_span"] >= 20 and plain.guard["resampled"] == 0


def test_interrupt_keeps_what_was_written(tokenizer):
    engine = ScriptEngine(tokenizer, sentences(200))
    shown = []
    inner = engine.continue_ids

    def stop_after_a_while(ids, n, **kw):
        if len(engine.contexts) == 6:
            raise KeyboardInterrupt
        return inner(ids, n, **kw)

    engine.continue_ids = stop_after_a_while
    scene = write_scene(engine, tokenizer, "Chapter", 1000, chunk_tokens=24, on_paragraph=shown.append)
    assert scene.interrupted and 0 < scene.words < 1000
    assert "\n\n".join(shown) == scene.text  # everything written was handed out


@pytest.mark.parametrize(
    ("words", "beats", "message"),
    [
        (0, [], "--words must be between"),
        (-5, [], "--words must be between"),
        (5000, [], "--words must be between"),
        (200, ["  "], "beat 1 is empty"),
    ],
)
def test_bad_scene_requests(tokenizer, words, beats, message):
    with pytest.raises(ShelleyError, match=message):
        write_scene(ScriptEngine(tokenizer, sentences(10)), tokenizer, "x", words, beats=beats)


def test_prompt_or_beat_longer_than_the_context(tokenizer):
    engine = ScriptEngine(tokenizer, sentences(10), position_limit=128)
    with pytest.raises(ShelleyError, match=r"the prompt has \d+ tokens"):
        write_scene(engine, tokenizer, " ".join(FILLER * 5), 200, chunk_tokens=16)
    with pytest.raises(ShelleyError, match="beat is longer than half"):
        write_scene(engine, tokenizer, "x", 200, beats=[" ".join(FILLER * 3)], chunk_tokens=16)
