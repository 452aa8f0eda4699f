"""Hand-written autograd Functions under autocast, cast as autocast casts ``nn.Linear``."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

# id(weight) -> (weight, its version, its low-precision copy), while ``frozen_casts`` is entered
_FROZEN: ContextVar[dict[int, tuple[Any, int, Any]] | None] = ContextVar("shelley_frozen_casts", default=None)


@contextmanager
def frozen_casts():
    """Within: a frozen weight (``requires_grad`` off) that ``apply_in_autocast_dtype`` casts is cast once and
    its copy reused until the weight changes in place, instead of at every forward. Autocast casts again at each
    forward because it cannot know a weight will not change: for LoRA's frozen base that is every weight of the
    model read in fp32 and written in bf16 at every step. The copies (half the frozen weights' size in bf16) go
    when the block exits."""
    token = _FROZEN.set({})
    try:
        yield
    finally:
        _FROZEN.reset(token)


def _cast(tensor, dtype):
    cache = _FROZEN.get()
    if cache is None or tensor.requires_grad or tensor.dtype == dtype:
        return tensor.to(dtype)
    hit = cache.get(id(tensor))
    # the entry holds the weight itself, so its id cannot be reused by another tensor while the entry lives
    if hit is None or hit[0] is not tensor or hit[1] != tensor._version:
        hit = cache[id(tensor)] = (tensor, tensor._version, tensor.detach().to(dtype))
    return hit[2]


def apply_in_autocast_dtype(function: Any, *args: Any):
    """``function.apply(*args)``; under autocast (on the device of the first tensor) its floating-point tensor
    arguments are cast to the autocast dtype first and it runs with autocast off, so its own products stay in
    that dtype and autograd casts the gradients back to the inputs' dtype (fp32 weights get fp32 gradients).
    Integer tensors (targets), None and plain numbers pass through unchanged. Frozen weights are cast once
    inside ``frozen_casts``."""
    import torch

    device = next(a for a in args if isinstance(a, torch.Tensor)).device.type
    if not torch.is_autocast_enabled(device):
        return function.apply(*args)
    low = torch.get_autocast_dtype(device)
    args = tuple(_cast(a, low) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    with torch.autocast(device, enabled=False):
        return function.apply(*args)
