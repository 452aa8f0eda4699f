"""Hand-written Functions under autocast: what they receive, and the frozen weights cast once per run."""

from __future__ import annotations

from typing import ClassVar

import torch

from shelley.finetune.autocast import apply_in_autocast_dtype, frozen_casts


class _Seen(torch.autograd.Function):
    """x @ w.T, recording the tensors it was given."""

    seen: ClassVar[list[tuple[torch.Tensor, torch.Tensor]]] = []

    @staticmethod
    def forward(ctx, x, w):
        _Seen.seen.append((x, w))
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad @ w, grad.t() @ x


def _calls(x, w, n=2):
    _Seen.seen = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [apply_in_autocast_dtype(_Seen, x, w) for _ in range(n)]
    return outs, [seen[1] for seen in _Seen.seen]


def test_a_frozen_weight_is_cast_once_inside_frozen_casts_and_again_when_it_changes():
    x = torch.randn(4, 8, requires_grad=True)
    frozen = torch.randn(3, 8)
    with frozen_casts():
        outs, given = _calls(x, frozen)
        assert given[0].dtype == torch.bfloat16 and given[0] is given[1]  # one cast, reused
        assert torch.equal(given[0], frozen.to(torch.bfloat16))
        frozen.mul_(2)  # changed in place: the copy is stale
        _, given2 = _calls(x, frozen, n=1)
        assert torch.equal(given2[0], frozen.to(torch.bfloat16)) and given2[0] is not given[0]
    # outside the block every call casts afresh, as autocast does
    _, given = _calls(x, frozen)
    assert given[0] is not given[1]
    # the result and the input's gradient are what they are without the cache
    outs[0].float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_a_trainable_weight_is_cast_at_every_call_and_gets_its_gradient():
    x = torch.randn(4, 8)
    w = torch.randn(3, 8, requires_grad=True)
    with frozen_casts():
        outs, given = _calls(x, w)
        assert given[0] is not given[1]
        outs[0].float().sum().backward()
    assert w.grad is not None and w.grad.dtype == torch.float32
