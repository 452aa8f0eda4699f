"""Batched generation with left padding, stop strings, prompt fitting and the --original re-sampling loop."""

from __future__ import annotations

import pytest

from conftest import tiny_causal_lm
from shelley.config import GenerationConfig
from shelley.errors import ShelleyError
from shelley.generate import check_generation, cut_at_stop, fit_prompts, generate_texts
from shelley.generate.write import write

PROMPTS = ["The storm", "I was born in a quiet town by the lake, where", "My"]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.pad_token = tok.eos_token
    return tok


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_batched_equals_one_at_a_time_under_greedy(tokenizer, kind):
    model = tiny_causal_lm(kind, len(tokenizer), seed=3)
    gen = GenerationConfig(do_sample=False, max_new_tokens=12, repetition_penalty=1.0)
    batched = generate_texts(model, tokenizer, PROMPTS, gen)
    single = [generate_texts(model, tokenizer, [p], gen)[0] for p in PROMPTS]
    assert batched == single
    assert all(t for t in batched)  # something was generated for each prompt


def test_sampling_is_seeded_and_samples_differ(tokenizer):
    model = tiny_causal_lm("llama", len(tokenizer), seed=1)
    gen = GenerationConfig(max_new_tokens=10, num_samples=3, temperature=1.5, top_k=0, top_p=1.0)
    a = generate_texts(model, tokenizer, ["The storm"], gen)
    assert a == generate_texts(model, tokenizer, ["The storm"], gen)
    assert len(a) == 3 and len(set(a)) > 1


def test_temperature_zero_is_greedy(tokenizer):
    model = tiny_causal_lm("llama", len(tokenizer), seed=2)
    greedy = generate_texts(model, tokenizer, ["I was"], GenerationConfig(do_sample=False, max_new_tokens=8))
    zero = generate_texts(model, tokenizer, ["I was"], GenerationConfig(temperature=0, max_new_tokens=8, seed=9))
    assert greedy == zero


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.8, 50, 0.95), (1.3, 5, 0.5), (0.3, 200, 1.0)])
def test_top_k_top_p_processor_equals_hf_warpers(temperature, top_k, top_p):
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from shelley.generate import _top_k_top_p

    torch.manual_seed(0)
    for scale in (0.5, 3.0, 10.0):  # flat to peaked distributions: top-p cuts at different ranks
        scores = torch.randn(6, 3000) * scale
        expected = TemperatureLogitsWarper(temperature)(None, scores.clone())
        expected = TopPLogitsWarper(top_p)(None, TopKLogitsWarper(top_k)(None, expected))
        got = _top_k_top_p(temperature, top_k, top_p)(None, scores.clone())
        assert torch.equal(got, expected)
        kept = torch.isfinite(got).sum(dim=1)  # (rows,)
        assert int(kept.min()) >= 1 and int(kept.max()) <= top_k


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.8, 50, 0.95), (1.3, 5, 0.5)])
def test_top_k_top_p_draws_from_the_warped_distribution(temperature, top_k, top_p):
    """With draw=True the argmax of the processor's output is a draw from softmax(HF's warped scores): every
    candidate's frequency over 40,000 draws lies within 4.5 standard errors of its probability, and no token
    HF's warpers drop is ever drawn."""
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from shelley.generate import _top_k_top_p

    torch.manual_seed(0)
    row = torch.randn(1, 3000) * 3.0
    expected = TemperatureLogitsWarper(temperature)(None, row.clone())
    probs = TopPLogitsWarper(top_p)(None, TopKLogitsWarper(top_k)(None, expected)).softmax(-1)[0]  # (V,)
    n = 40_000
    drawn = _top_k_top_p(temperature, top_k, top_p, draw=True)(None, row.expand(n, -1).clone()).argmax(-1)
    freq = torch.bincount(drawn, minlength=row.shape[1]).double() / n  # (V,)
    assert float(freq[probs == 0].sum()) == 0.0
    kept = probs > 0
    assert int(kept.sum()) > 1  # a real choice, not one certain token
    p = probs[kept].double()  # (kept,)
    stderr = (p * (1 - p) / n).sqrt()
    assert bool(((freq[kept] - p).abs() <= 4.5 * stderr + 1e-9).all())


def test_a_zero_exponential_draw_never_picks_a_dropped_token(monkeypatch):
    """exponential_ can return exactly 0 on CPU (-log(1 - u) at u = 0); -inf - log(0) would be NaN, and
    argmax picks NaN."""
    import torch

    from shelley.generate import _top_k_top_p

    monkeypatch.setattr(torch.Tensor, "exponential_", lambda self: self.zero_())
    scores = torch.tensor([[5.0, 4.0, -3.0, -4.0, 0.0]])
    out = _top_k_top_p(1.0, 3, 0.5, draw=True)(None, scores.clone())
    assert not bool(out.isnan().any())
    assert int(out.argmax(-1)) == 0  # top-p 0.5 keeps only the first token


def test_sampling_with_top_k_is_seeded_random_and_wired(tokenizer):
    """generate_texts draws through the processor: seeded, the rows differ, and top_k=1 leaves only the argmax."""
    model = tiny_causal_lm("llama", len(tokenizer), seed=4)
    gen = GenerationConfig(max_new_tokens=12, min_new_tokens=12, num_samples=3, temperature=1.5, top_k=20, top_p=0.9)
    ours = generate_texts(model, tokenizer, PROMPTS, gen, seed=11)
    assert ours == generate_texts(model, tokenizer, PROMPTS, gen, seed=11)
    assert len(set(ours[:3])) > 1 and ours != generate_texts(model, tokenizer, PROMPTS, gen, seed=12)
    top1 = gen.model_copy(update={"top_k": 1, "num_samples": 1})
    greedy = GenerationConfig(do_sample=False, max_new_tokens=12, min_new_tokens=12)
    assert generate_texts(model, tokenizer, PROMPTS, top1, seed=5) == generate_texts(model, tokenizer, PROMPTS, greedy)


def test_stop_string_cuts_every_sample():
    assert cut_at_stop("a dark night. And then", [". "]) == "a dark night"
    assert cut_at_stop("no stop here", ["###"]) == "no stop here"


def test_empty_and_too_long_prompts(tokenizer):
    ids, notes = fit_prompts(tokenizer, ["", "the storm broke at midnight " * 20], max_prompt_tokens=16)
    assert ids[0] == [tokenizer.eos_token_id] and "unconditionally" in notes[0]
    assert len(ids[1]) == 16 and "kept its last 16" in notes[1]
    full = tokenizer("the storm broke at midnight " * 20, add_special_tokens=False)["input_ids"]
    assert ids[1] == full[-16:]  # truncated from the left: the end of the prompt is what gets continued


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("max_new_tokens", 0, "max new tokens"), ("temperature", -0.5, "temperature"), ("top_p", 1.5, "top-p")],
)
def test_bad_generation_settings(field, value, message):
    gen = GenerationConfig().model_copy(update={field: value})  # bypasses validation, like a caller could
    with pytest.raises(ShelleyError, match=message):
        check_generation(gen)


class _CountingIndex:
    """Stands in for CorpusIndex: the first ``copies`` checks report a 20-word copy, later ones none."""

    def __init__(self, copies: int):
        self.left = copies

    def check(self, text):
        span = 20 if self.left > 0 else 3
        self.left -= 1
        return {"longest_span": span, "ngram_share": 0.0, "location": None, "words": 10, "ngram_n": 8}


def test_original_resamples_copies_until_clean(tokenizer):
    model = tiny_causal_lm("llama", len(tokenizer), seed=4)
    gen = GenerationConfig(max_new_tokens=6, num_samples=2)
    notes = []
    out = write(model, tokenizer, ["The storm"], gen, index=_CountingIndex(3), original=True, on_note=notes.append)
    assert [r["originality"]["longest_span"] for r in out] == [3, 3]
    assert [r["tries"] for r in out] == [3, 2] and not any(r["gave_up"] for r in out)
    assert any("re-sampling 2" in n for n in notes)


def test_original_says_when_it_gives_up(tokenizer):
    model = tiny_causal_lm("llama", len(tokenizer), seed=4)
    notes = []
    out = write(
        model,
        tokenizer,
        ["The storm"],
        GenerationConfig(max_new_tokens=6),
        index=_CountingIndex(100),
        original=True,
        tries=3,
        on_note=notes.append,
    )
    assert out[0]["gave_up"] and out[0]["tries"] == 3
    assert any("gave up" in n and "after 3 tries" in n for n in notes)
