"""Decoding on CPU: int8 weights for the transformers engine, and the name generate gives its cache.

One decoded token reads every weight once and does little arithmetic with it, so on 2 cores a step is bound by
memory traffic. ``Int8Linear`` moves a quarter of the bytes fp32 weights move.
"""

from __future__ import annotations

import functools

import torch


class Int8Linear(torch.nn.Module):
    """A linear layer for decoding: int8 weights with one scale per output row, bf16 activations.

    fp32 weights move four bytes each per token, int8 one. ATen's ``_weight_int8pack_mm`` (the kernel gpt-fast's
    int8 mode uses) multiplies bf16 activations by int8 rows and their scales without widening the weights.
    Round-to-nearest per-row absmax quantisation; it changes the model's numbers (``shelley eval`` measures
    by how much), so it is an option, never a silent default."""

    def __init__(self, linear: torch.nn.Linear, dtype=torch.bfloat16) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(dtype))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x):
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features), self.weight, self.scale)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def int8_weights(model):
    """``model`` for decoding with int8 weights: every ``nn.Linear`` (the output head too, given its own copy
    when it shares the embedding's) becomes an ``Int8Linear`` and the rest bf16. In place; returns ``model``."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, Int8Linear(child))
    return model.to(torch.bfloat16)


@functools.cache
def cache_arg() -> str:
    """transformers 5 renamed generate's ``past_key_values`` to ``cache`` (output field and argument alike)."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"
