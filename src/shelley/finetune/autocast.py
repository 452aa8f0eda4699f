"""Hand-written autograd Functions under autocast, cast as autocast casts ``nn.Linear``."""

from __future__ import annotations

from typing import Any


def apply_in_autocast_dtype(function: Any, *args: Any):
    """``function.apply(*args)``; under autocast (on the device of the first tensor) its floating-point tensor
    arguments are cast to the autocast dtype first and it runs with autocast off, so its own products stay in
    that dtype and autograd casts the gradients back to the inputs' dtype (fp32 weights get fp32 gradients).
    Integer tensors (targets), None and plain numbers pass through unchanged."""
    import torch

    device = next(a for a in args if isinstance(a, torch.Tensor)).device.type
    if not torch.is_autocast_enabled(device):
        return function.apply(*args)
    low = torch.get_autocast_dtype(device)
    args = tuple(a.to(low) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    with torch.autocast(device, enabled=False):
        return function.apply(*args)
