"""Decoding on CPU without transformers' per-token copies: a KV cache that grows in place.

transformers' ``DynamicLayer`` concatenates each new token's keys and values onto the whole cache, so every
decoded token copies every layer's cache once more: work that grows with the context. With SmolLM2-135M at 900
tokens of context on 2 cores that copy is 11 of 72 ms per token (``torch.profiler``: ``aten::cat``). A
``GrowingLayer`` keeps keys and values in a buffer with room to spare, writes the new token in place and hands
out views of the filled part, so the numbers are the same and only the copying is gone.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

MIN_ROOM = 256  # tokens a buffer holds at first; it doubles when full, so growing costs O(1) per token


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer whose keys and values are views of a buffer that doubles when full."""

    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        self._kbuf = self._vbuf = None
        self._handed: Any = None  # the keys tensor this layer last handed out

    def _adopt(self, like) -> None:
        """Take over ``self.keys``/``self.values`` (empty, or replaced by transformers: a batch select, a reorder)
        into a buffer of this layer's own."""
        n = self.keys.shape[-2] if self.keys.numel() else 0
        shape = (*like.shape[:-2], max(MIN_ROOM, 2 * (n + like.shape[-2])), like.shape[-1])
        self._kbuf, self._vbuf = like.new_empty(shape), like.new_empty(shape)
        if n:
            self._kbuf[..., :n, :].copy_(self.keys)
            self._vbuf[..., :n, :].copy_(self.values)
        self._n = n

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.keys is not self._handed:
            self._adopt(key_states)
        n, m = self._n, key_states.shape[-2]
        if n + m > self._kbuf.shape[-2]:
            self.keys, self.values = self._kbuf[..., :n, :], self._vbuf[..., :n, :]
            self._adopt(key_states)  # a buffer twice as large, holding the n tokens so far
        self._kbuf[..., n : n + m, :].copy_(key_states)
        self._vbuf[..., n : n + m, :].copy_(value_states)
        self._n = n + m
        self.keys, self.values = self._kbuf[..., : self._n, :], self._vbuf[..., : self._n, :]
        self._handed = self.keys
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)  # a shorter view of the same buffer
        if self.is_initialized and self.keys is not None and self.keys.numel():
            self._n = self.keys.shape[-2]
            self._handed = self.keys

    def reset(self) -> None:
        super().reset()
        self._kbuf = self._vbuf = self._handed = None


@functools.cache
def cache_arg() -> str:
    """transformers 5 renamed generate's ``past_key_values`` to ``cache`` (output field and argument alike)."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


def decode_cache(model) -> DynamicCache | None:
    """The cache to decode ``model`` with: a ``growing_cache`` where its config describes its layers, else None
    (``generate`` makes its own)."""
    try:
        return growing_cache(model)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def growing_cache(model) -> DynamicCache:
    """A ``DynamicCache`` for ``model`` whose full-attention layers grow in place (``GrowingLayer``); sliding-window
    layers (Gemma 3) stay transformers' own, since they hold a bounded window anyway."""
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


class Int8Linear(torch.nn.Module):
    """A linear layer for decoding: int8 weights with one scale per output row, bf16 activations.

    Decoding one token reads every weight once and does little with it, so on CPU a step is bound by memory
    traffic: fp32 weights move four bytes each, int8 one. ATen's ``_weight_int8pack_mm`` (the kernel gpt-fast's
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
