"""Decoding without per-token copies (models.decode): the growing KV cache changes no number, int8 weights change
few."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from conftest import tiny_causal_lm
from shelley.models.decode import MIN_ROOM, GrowingLayer, Int8Linear, cache_arg, growing_cache, int8_weights


def _greedy(model, ids, n, cache):
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
            do_sample=False, pad_token_id=0, return_dict_in_generate=True, **{cache_arg(): cache},
        )  # fmt: skip
    return out.sequences, getattr(out, cache_arg())


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma3"])
def test_growing_cache_decodes_the_same_tokens_past_its_first_buffer(kind):
    """Greedy decoding past MIN_ROOM tokens (so the buffer doubles once) gives the stock DynamicCache's tokens,
    and the cache ends as long as the sequence."""
    model = tiny_causal_lm(kind, 300, max_positions=1024).eval()
    ids = torch.randint(2, 300, (1, 20))  # a short prompt: the first buffer holds MIN_ROOM tokens
    stock, _ = _greedy(model, ids, MIN_ROOM + 40, DynamicCache(config=model.config))
    grown, cache = _greedy(model, ids, MIN_ROOM + 40, growing_cache(model))
    assert torch.equal(stock, grown)
    full = [layer for layer in cache.layers if isinstance(layer, GrowingLayer)]
    assert full, "no full-attention layer was swapped"
    assert all(layer._kbuf.shape[-2] > MIN_ROOM for layer in full)  # it grew
    assert cache.get_seq_length() == grown.shape[1] - 1  # the last token is drawn, never fed back


def test_growing_cache_crops_and_continues_like_a_fresh_prefill():
    """The scene writer's reuse: crop the cache back to a shared prefix and go on. The tokens match a fresh
    prefill of the same ids, and the crop left the buffer in place (no copy)."""
    model = tiny_causal_lm("llama", 300, max_positions=512).eval()
    ids = torch.randint(2, 300, (1, 40))
    seq, cache = _greedy(model, ids, 30, growing_cache(model))
    buf = cache.layers[0]._kbuf
    cache.crop(-(cache.get_seq_length() - 50))  # keep the first 50 tokens
    again, cache = _greedy(model, seq[:, :51], 20, cache)
    fresh, _ = _greedy(model, seq[:, :51], 20, DynamicCache(config=model.config))
    assert torch.equal(again, fresh)
    assert cache.layers[0]._kbuf is buf


def test_growing_cache_follows_a_batch_select():
    """The batch writer drops rows that finished (``batch_select_indices``); the kept rows decode as a batch of
    those rows alone would."""
    model = tiny_causal_lm("llama", 300, max_positions=512).eval()
    ids = torch.randint(2, 300, (3, 30))
    seq, cache = _greedy(model, ids, 10, growing_cache(model))
    cache.batch_select_indices(torch.tensor([0, 2]))
    kept, _ = _greedy(model, seq[[0, 2]], 10, cache)
    alone, _ = _greedy(model, seq[[0, 2]], 10, DynamicCache(config=model.config))
    assert torch.equal(kept, alone)


def test_int8_linear_matches_the_float_layer_within_quantisation_error():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96, bias=True)
    x = torch.randn(5, 64)
    q = Int8Linear(lin)
    assert q.weight.dtype == torch.int8 and q.weight.shape == (96, 64)
    got = q(x.bfloat16()).float()
    want = lin(x).detach()
    rel = (got - want).norm() / want.norm()
    assert rel < 0.02, rel  # per-row absmax int8 and bf16 activations: about 1 % here


def test_int8_weights_keeps_the_model_s_next_token_choices():
    """A whole tiny model with int8 weights: every linear swapped (the tied head too) and the next-token
    distribution nearly unchanged."""
    model = tiny_causal_lm("llama", 300, hidden=64).eval()
    ids = torch.randint(2, 300, (2, 24))
    with torch.inference_mode():
        want = model(input_ids=ids).logits.float()
        int8_weights(model)
        got = model(input_ids=ids).logits.float()
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert isinstance(model.lm_head, Int8Linear)
    cos = torch.nn.functional.cosine_similarity(got.flatten(0, 1), want.flatten(0, 1), dim=-1)
    assert cos.min() > 0.99, cos.min()
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean()
    assert agree > 0.9, agree
