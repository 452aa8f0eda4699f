"""The one-stream decoder (models.llama_decode) and its scene engine: transformers' numbers, its cache rolled back
like transformers' cache, and the engine chosen only where it can run the model."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_causal_lm
from shelley.config import GenerationConfig
from shelley.generate.scene import TransformersEngine, transformers_engine, write_scene
from shelley.generate.stream import DecoderEngine
from shelley.models.decode import int8_weights
from shelley.models.llama_decode import LlamaDecoder, unsupported


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.pad_token = tok.eos_token
    return tok


def _hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_decoder_gives_transformers_logits_through_prefill_steps_chunks_and_rollback(kind):
    model = tiny_causal_lm(kind, 300, hidden=64, max_positions=512, seed=1).eval()
    ids = torch.randint(2, 300, (80,), generator=torch.Generator().manual_seed(0)).tolist()
    want = _hf_logits(model, ids)
    dec = LlamaDecoder(model)
    got = [dec.forward(ids[:30], 0)]  # a prefill
    got += [dec.forward([t], p) for p, t in enumerate(ids[30:40], start=30)]  # one token at a time
    got.append(dec.forward(ids[40:60], 40))  # a chunk after the cached prefix: a causal mask offset by 40
    for g, at in zip(got, [29, *range(30, 40), 59], strict=True):
        torch.testing.assert_close(g, want[at], atol=1e-4, rtol=1e-4)
    # Rolled back to position 25 and continued with other tokens: the cache past 25 is overwritten, not read.
    other = ids[:25] + ids[60:80]
    torch.testing.assert_close(dec.forward(ids[60:80], 25), _hf_logits(model, other)[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_one_token_of_one_row_takes_a_lean_path_with_the_general_paths_numbers(weights):
    """A scene's every step is one token of one row; ``forward_rows`` runs it on ``_one``, which leaves out what
    only a span of rows or tokens needs. Its logits and the keys and values it caches are the general path's
    bit for bit, in slot 0 and in a slot of a many-slot cache, on float32 and on int8 weights."""
    model = tiny_causal_lm("llama", 300, hidden=64, max_positions=512, seed=4).eval()
    if weights == "int8":
        with torch.inference_mode():
            int8_weights(model)
    ids = torch.randint(2, 300, (60,), generator=torch.Generator().manual_seed(5)).tolist()
    for slot in (0, 2):
        lean, general = LlamaDecoder(model, slots=3), LlamaDecoder(model, slots=3)
        for dec in (lean, general):
            dec._rows(slot, [ids[:20]], [0], logits=False)
        for p, t in enumerate(ids[20:], start=20):
            got = lean.forward_rows(slot, [[t]], [p])  # the lean path
            want = general._rows(slot, [[t]], [p], logits=True)
            assert torch.equal(got, want), (slot, p)
        assert torch.equal(lean.keys, general.keys) and torch.equal(lean.values, general.values)


def test_rows_in_their_own_slots_give_transformers_logits():
    """Several slots as one batch: prompts of different lengths prefilled together (a slot inside the span left
    out), then a token of every row a step at its own position, then two rows' chunks after their cached
    prefixes. Each row's logits are what transformers gives that row alone."""
    model = tiny_causal_lm("llama", 300, hidden=64, max_positions=512, seed=1).eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(2, 300, (n,), generator=g).tolist() for n in (30, 17, 45, 22)]
    cut = [20, 10, 30, 15]
    dec = LlamaDecoder(model, slots=6)
    # slots 1, 3 and 4 prefilled together, slot 2 (inside the span) untouched; then slot 2 alone
    assert dec.forward_rows(1, [seqs[0][:20], None, seqs[2][:30], seqs[3][:15]], [0, 0, 0, 0], logits=False) is None
    torch.testing.assert_close(dec.forward_rows(2, [seqs[1][:10]], [0])[0], _hf_logits(model, seqs[1][:10])[-1])
    pos = list(cut)
    while any(p < len(s) for p, s in zip(pos, seqs, strict=True)):
        rows = [[s[p]] if p < len(s) else None for p, s in zip(pos, seqs, strict=True)]
        got = iter(dec.forward_rows(1, rows, pos))
        for j, r in enumerate(rows):
            if r:
                want = _hf_logits(model, seqs[j][: pos[j] + 1])[-1]
                torch.testing.assert_close(next(got), want, atol=1e-4, rtol=1e-4)
                pos[j] += 1
    # two rows rolled back to 5 and 9 tokens, then given chunks of 7 and 2 ids
    dec.forward_rows(1, [seqs[0][:5], seqs[1][:9]], [0, 0], logits=False)
    got = dec.forward_rows(1, [seqs[0][5:12], seqs[1][9:11]], [5, 9])
    torch.testing.assert_close(got[0], _hf_logits(model, seqs[0][:12])[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1], _hf_logits(model, seqs[1][:11])[-1], atol=1e-4, rtol=1e-4)
    # a slot's cache moved to another slot goes on there as it would have in its own
    dec.move(1, 5)
    torch.testing.assert_close(dec.forward_rows(5, [seqs[0][12:14]], [12])[0], _hf_logits(model, seqs[0][:14])[-1],
                               atol=1e-4, rtol=1e-4)  # fmt: skip


def test_a_step_with_a_few_long_rows_gives_every_row_its_own_logits():
    """Two rows of ~300 positions among six of ~20 (a scene beside short readers): the batch attends over the
    short rows' reach and the long rows apart; every row's logits are still transformers' for that row."""
    from shelley.models.llama_decode import _reach

    model = tiny_causal_lm("llama", 300, hidden=64, max_positions=1024, seed=1).eval()
    g = torch.Generator().manual_seed(0)
    lens = [20, 25, 18, 30, 22, 300, 21, 280]
    seqs = [torch.randint(2, 300, (n + 1,), generator=g).tolist() for n in lens]
    dec = LlamaDecoder(model, slots=len(seqs))
    for j, s in enumerate(seqs):
        dec.forward_rows(j, [s[:-1]], [0], logits=False)
    assert _reach([n + 1 for n in lens]) == (31, [(5, 301), (7, 281)])  # the two long rows go apart
    got = dec.forward_rows(0, [[s[-1]] for s in seqs], lens)
    for row, s in zip(got, seqs, strict=True):
        torch.testing.assert_close(row, _hf_logits(model, s)[-1], atol=1e-4, rtol=1e-4)


def test_wide_products_are_bf16_from_wide_rows_and_float32_below():
    """``wide``: a batch of ``WIDE_ROWS`` rows or more multiplies on the bf16 copy (logits within bf16 rounding
    of transformers'), fewer rows on the float32 weights (transformers' logits to 1e-4)."""
    from shelley.models import llama_decode

    model = tiny_causal_lm("llama", 300, hidden=64, max_positions=512, seed=3).eval()
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(2, 300, (12,), generator=g).tolist() for _ in range(llama_decode.WIDE_ROWS)]
    dec = LlamaDecoder(model, slots=len(seqs), wide=True)
    few = dec.forward_rows(0, [[s[0]] for s in seqs[: llama_decode.WIDE_ROWS - 1]], [0] * (llama_decode.WIDE_ROWS - 1))
    for row, s in zip(few, seqs, strict=False):
        torch.testing.assert_close(row, _hf_logits(model, s[:1])[-1], atol=1e-4, rtol=1e-4)
    many = dec.forward_rows(0, [s[:1] for s in seqs], [0] * len(seqs))
    for row, s in zip(many, seqs, strict=True):
        want = _hf_logits(model, s[:1])[-1]
        assert not torch.allclose(row, want, atol=1e-5)  # bf16: not the float32 numbers...
        assert torch.cosine_similarity(row, want, dim=0) > 0.999  # ...but within its rounding


def test_the_cache_grows_past_its_first_size_keeping_what_it_holds():
    model = tiny_causal_lm("llama", 300, hidden=32, max_positions=1024, seed=2).eval()
    ids = torch.randint(2, 300, (300,), generator=torch.Generator().manual_seed(1)).tolist()
    dec = LlamaDecoder(model)
    dec.forward(ids[:250], 0)
    first = dec.capacity
    last = dec.forward(ids[250:], 250)  # past the first 256 positions: the cache doubles
    assert dec.capacity > first >= 250
    torch.testing.assert_close(last, _hf_logits(model, ids)[-1], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="past the model's limit"):
        dec.forward(ids[:10], 1020)


def test_decoder_on_int8_weights_follows_transformers_on_the_same_weights():
    model = tiny_causal_lm("llama", 300, hidden=64, max_positions=256, seed=3).eval()
    with torch.inference_mode():
        int8_weights(model)
    ids = torch.randint(2, 300, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    want = _hf_logits(model, ids)
    dec = LlamaDecoder(model)
    assert dec.layers[0]["qkv"].weight.dtype == torch.int8  # q, k and v rows stacked, still int8
    got = [dec.forward(ids[:32], 0), *(dec.forward([t], p) for p, t in enumerate(ids[32:], start=32))]
    got = torch.stack(got)
    want = want[31:]
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cos.min() > 0.999, cos  # bf16 activations: the same function up to rounding
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.85


def test_unsupported_models_name_why_and_keep_transformers_engine(tokenizer):
    gen = GenerationConfig(do_sample=False)
    for kind, why in [("gpt2", "not a Llama-architecture model"), ("gemma3", "not a Llama-architecture model")]:
        model = tiny_causal_lm(kind, len(tokenizer))
        assert why in unsupported(model)
        assert isinstance(transformers_engine(model, tokenizer, gen), TransformersEngine)
    windowed = tiny_causal_lm("mistral", len(tokenizer))
    windowed.config.sliding_window = 16
    assert "sliding-window" in unsupported(windowed)
    with pytest.raises(ValueError, match="sliding-window"):
        LlamaDecoder(windowed)
    llama = tiny_causal_lm("llama", len(tokenizer))
    assert unsupported(llama) is None
    assert isinstance(transformers_engine(llama, tokenizer, gen), DecoderEngine)
    # no_repeat_ngram_size is a generate() processor the decoder's sampling does not have
    assert isinstance(transformers_engine(llama, tokenizer, gen.model_copy(update={"no_repeat_ngram_size": 3})),
                      TransformersEngine)  # fmt: skip


def test_greedy_decoder_engine_writes_what_generate_writes_with_a_repetition_penalty(tokenizer):
    """Greedy with a strong penalty over the whole context: token for token what transformers' generate writes,
    across two calls of one scene (the second shares the first's prefix) and a whole scene with beats."""
    model = tiny_causal_lm("llama", len(tokenizer), seed=4, max_positions=256).eval()
    gen = GenerationConfig(do_sample=False, repetition_penalty=1.8)
    fast, slow = DecoderEngine(LlamaDecoder(model), tokenizer, gen), TransformersEngine(model, tokenizer, gen)
    ids = tokenizer("The storm broke and the storm broke and the storm", add_special_tokens=False).input_ids
    first = fast.continue_ids(ids, 12, seed=1)
    assert first == slow.continue_ids(ids, 12, seed=1)
    assert fast.continue_ids(ids + first, 12, seed=2) == slow.continue_ids(ids + first, 12, seed=2)
    kw = {"beats": ["Then the candle went out."], "context_tokens": 96, "chunk_tokens": 16}
    a = write_scene(fast, tokenizer, "The storm", 120, **kw)
    b = write_scene(slow, tokenizer, "The storm", 120, **kw)
    assert a.paragraphs == b.paragraphs and a.drawn_tokens == b.drawn_tokens > 96  # the context rolled


def test_a_seed_samples_the_same_scene_as_transformers_engine(tokenizer):
    """Both engines draw k exponentials a step from a generator seeded with the call's seed: with float32
    weights a sampled scene is the same scene on either."""
    model = tiny_causal_lm("llama", len(tokenizer), seed=7, max_positions=256).eval()
    gen = GenerationConfig(do_sample=True, temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.1)
    kw = {"context_tokens": 96, "chunk_tokens": 16, "seed": 11}
    a = write_scene(DecoderEngine(LlamaDecoder(model), tokenizer, gen), tokenizer, "The storm", 120, **kw)
    b = write_scene(TransformersEngine(model, tokenizer, gen), tokenizer, "The storm", 120, **kw)
    assert a.paragraphs == b.paragraphs and a.drawn_tokens == b.drawn_tokens


def test_decoder_engine_feeds_only_new_tokens_and_a_seed_draws_the_same_scene(tokenizer):
    """Sampling: the same seed writes the same scene, another seed another. The kept cache means a chunk feeds
    its new tokens, not its whole context again: an engine that forgets its cache between calls feeds more than
    twice as many."""
    model = tiny_causal_lm("llama", len(tokenizer), seed=5, max_positions=256).eval()
    gen = GenerationConfig(do_sample=True, temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.1)
    fed: list[int] = []

    def engine(*, forget: bool = False) -> DecoderEngine:
        dec = LlamaDecoder(model)
        forward = dec.forward
        dec.forward = lambda ids, start: fed.append(len(ids)) or forward(ids, start)
        eng = DecoderEngine(dec, tokenizer, gen)
        if forget:
            inner = eng.continue_ids
            eng.continue_ids = lambda *a, **kw: eng._cached.clear() or inner(*a, **kw)
        return eng

    kw = {"context_tokens": 96, "chunk_tokens": 16}
    a = write_scene(engine(), tokenizer, "The storm", 150, seed=7, **kw)
    kept, fed[:] = sum(fed), []
    b = write_scene(engine(forget=True), tokenizer, "The storm", 150, seed=7, **kw)
    forgot = sum(fed)
    c = write_scene(engine(), tokenizer, "The storm", 150, seed=8, **kw)
    assert a.paragraphs == b.paragraphs and a.paragraphs != c.paragraphs
    assert a.drawn_tokens > 96 and kept < forgot / 2, (kept, forgot)


def test_the_engine_leaves_the_model_it_reads_unchanged(tokenizer):
    model = tiny_causal_lm("llama", len(tokenizer), seed=6, max_positions=128).eval()
    before = copy.deepcopy(model.state_dict())
    write_scene(transformers_engine(model, tokenizer, GenerationConfig()), tokenizer, "The storm", 100)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_decoder_engine_stops_at_a_stop_id_or_when_asked(tokenizer):
    model = tiny_causal_lm("llama", len(tokenizer), seed=8, max_positions=128).eval()
    engine = DecoderEngine(LlamaDecoder(model), tokenizer, GenerationConfig(do_sample=False, repetition_penalty=1.0))
    ids = tokenizer("The storm broke", add_special_tokens=False).input_ids
    full = engine.continue_ids(ids, 10, seed=1)
    stop = full[3]
    assert engine.continue_ids(ids, 10, seed=1, stop_ids=[stop]) == full[: full.index(stop) + 1]
    assert engine.continue_ids(ids, 10, seed=1, until=lambda new: len(new) >= 2) == full[:2]


def test_one_sample_through_generate_texts_is_what_generate_writes(tokenizer, monkeypatch):
    """``generate_texts`` with one prompt and one sample runs on the decoder: the text transformers' generate writes
    for that seed (sampled, min_new_tokens, a stop string), and its streamer sees the prompt, then each token."""
    import shelley.models.llama_decode as llama_decode
    from shelley.generate import generate_texts

    model = tiny_causal_lm("llama", len(tokenizer), seed=9, max_positions=128).eval()
    gen = GenerationConfig(max_new_tokens=30, min_new_tokens=5, temperature=0.9, top_k=20, stop=["the"])

    class Recorder:
        def __init__(self) -> None:
            self.puts: list[list[int]] = []
            self.ended = False

        def put(self, value) -> None:
            self.puts.append(value.reshape(-1).tolist())

        def end(self) -> None:
            self.ended = True

    seen = Recorder()
    prompts = [("The storm", 3), ("The storm", 4), ("A letter came", 3), ("A letter came", 4)]
    fast = [generate_texts(model, tokenizer, [p], gen, seed=s, streamer=None if i else seen)[0]
            for i, (p, s) in enumerate(prompts)]  # fmt: skip
    prompt_ids = tokenizer("The storm", add_special_tokens=False).input_ids
    assert seen.puts[0] == prompt_ids and all(len(p) == 1 for p in seen.puts[1:]) and seen.ended
    streamed = tokenizer.decode([t for p in seen.puts[1:] for t in p], skip_special_tokens=True)
    assert streamed.startswith(fast[0])
    monkeypatch.setattr(llama_decode, "unsupported", lambda _model: "forced onto generate for the test")
    slow = [generate_texts(model, tokenizer, [p], gen, seed=s)[0] for p, s in prompts]
    assert fast == slow and len(set(fast)) > 1
