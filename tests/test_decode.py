"""int8 weights for decoding (models.decode): close to the float model, and every linear layer swapped."""

from __future__ import annotations

import torch

from conftest import tiny_causal_lm
from shelley.models.decode import Int8Linear, int8_weights


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
