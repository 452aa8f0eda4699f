"""The training loss of a causal LM, with the output head and the cross-entropy fused for CPU.

The stock path (``model(input_ids, labels=ids).loss``) materializes the (tokens x vocab) logits, a log-softmax
of the same size, and in backward a zero-filled gradient of the same size again: with SmolLM2's 49k vocabulary
that is three 200 MB passes per 1,024 tokens, and MKL runs the one (1024 x 576) @ (576 x 49152) matmul at about
2/3 of the speed it reaches on 4,096-column slices of it on this machine's AMD cores.

``LinearCrossEntropy`` computes the head in vocabulary slices, the loss from a log-sum-exp over the slices, and
the gradients in forward, so backward only scales what forward saved. When the head trains (full fine-tune)
the slices are kept and each is turned into its gradient in place once the log-sum-exp is known
(``_two_sweeps``); when it is frozen (LoRA) one reused slice buffer and an online softmax suffice
(``_one_sweep``). The loss is the same mean over target tokens as Hugging Face's ``ForCausalLMLoss`` (labels
shifted by one, -100 ignored).
"""

from __future__ import annotations

import functools

from shelley.finetune.autocast import apply_in_autocast_dtype
from shelley.models.head import FUSABLE_MODEL_TYPES, can_fuse, hidden_states_as_logits

__all__ = ["FUSABLE_MODEL_TYPES", "can_fuse", "causal_lm_loss", "linear_cross_entropy"]

IGNORE_INDEX = -100
# Columns per head slice, measured on SmolLM2's head on 2 cores: the two-sweep path (logits kept) is fastest at
# 4k of 4k/8k/16k/all; the one-sweep path (one reused buffer) at 2k of 1k-16k (3% faster than 4k).
VOCAB_CHUNK = 4096
ONLINE_CHUNK = 2048


def _one_sweep(hidden, weight, bias, chunk, acc, grad_needed):
    """Log-sum-exp over the vocabulary and ``softmax @ weight``, one slice at a time (the online softmax).

    For a frozen head (LoRA) the hidden states' gradient needs only ``sum_v softmax[n, v] * weight[v]``, which
    can be summed slice by slice under the running log-sum-exp and rescaled when it grows. So one logits
    buffer of (N, chunk) is reused and each slice is computed once and read while it is still in cache.
    Returns lse (N,) and that sum (N, C) or None."""
    import torch

    n_rows, vocab = hidden.shape[0], weight.shape[0]
    buffer = torch.empty(n_rows, min(chunk, vocab), dtype=hidden.dtype, device=hidden.device)
    lse = torch.full((n_rows,), float("-inf"), dtype=acc, device=hidden.device)
    expected = torch.zeros(n_rows, hidden.shape[1], dtype=acc, device=hidden.device) if grad_needed else None
    for start in range(0, vocab, chunk):
        w = weight[start : start + chunk]  # (c, C)
        logits = torch.mm(hidden, w.t(), out=buffer[:, : w.shape[0]])  # (N, c)
        if bias is not None:
            logits += bias[start : start + chunk]
        logits = logits.to(acc)
        peak = logits.amax(dim=1)  # (N,)
        probs = logits.sub_(peak[:, None]).exp_()  # (N, c) exp(logit - peak), in place
        new_lse = torch.logaddexp(lse, peak + probs.sum(dim=1).log())
        if expected is not None:
            # what was summed under the old lse, rescaled to the new one, plus this slice's share
            part = torch.mm(probs.to(hidden.dtype), w).to(acc).mul_((peak - new_lse).exp()[:, None])  # (N, C)
            expected.mul_((lse - new_lse).exp()[:, None]).add_(part)
        lse = new_lse
    return lse, expected


def _two_sweeps(hidden, weight, bias, targets, valid, scale, chunk, acc, needs):
    """Log-sum-exp over the vocabulary (first sweep, logits slices kept), then each slice turned into its
    gradient in place (second sweep): the head weight's gradient needs the final softmax of every slice."""
    import torch

    grad_hidden_needed, grad_weight_needed, grad_bias_needed = needs
    n_rows, vocab = hidden.shape[0], weight.shape[0]
    slices, lse_parts = [], []
    for start in range(0, vocab, chunk):
        logits = hidden @ weight[start : start + chunk].t()  # (N, c)
        if bias is not None:
            logits += bias[start : start + chunk]
        logits = logits.to(acc)
        lse_parts.append(torch.logsumexp(logits, dim=1))  # (N,)
        slices.append((start, logits))
    lse = torch.logsumexp(torch.stack(lse_parts), dim=0)  # (N,)
    grad_hidden = torch.zeros_like(hidden, dtype=acc) if grad_hidden_needed else None
    grad_weight = torch.empty_like(weight) if grad_weight_needed else None
    grad_bias = torch.empty_like(bias) if grad_bias_needed else None
    rows = torch.arange(n_rows, device=hidden.device)
    for start, logits in slices:
        # softmax * scale, minus scale at the target: d loss / d logits for this slice, in place
        g = logits.sub_(lse[:, None]).exp_().mul_(scale[:, None])
        here = valid & (targets >= start) & (targets < start + g.shape[1])
        g[rows[here], targets[here] - start] -= scale[here]
        g = g.to(hidden.dtype)
        w = weight[start : start + g.shape[1]]
        if grad_hidden is not None:
            if grad_hidden.dtype == g.dtype:
                grad_hidden.addmm_(g, w)  # (N, c) @ (c, C)
            else:  # bf16 products summed in fp32: 12 slices rounded into a bf16 sum would lose bits each time
                grad_hidden.add_(torch.mm(g, w))
        if grad_weight is not None:
            torch.mm(g.t(), hidden, out=grad_weight[start : start + g.shape[1]])  # (c, N) @ (N, C)
        if grad_bias is not None:
            grad_bias[start : start + g.shape[1]] = g.sum(dim=0)
    return lse, grad_hidden, grad_weight, grad_bias


@functools.cache  # one Function class, built on first use (torch is imported lazily), not one per step
def _linear_cross_entropy():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, chunk):
            # hidden (N, C), weight (V, C), bias (V,) | None, targets (N,) with IGNORE_INDEX for no target
            acc = torch.promote_types(hidden.dtype, torch.float32)  # softmax in fp32 at least, as HF's loss does
            valid = targets != IGNORE_INDEX  # (N,)
            n_valid = valid.sum().clamp(min=1)
            scale = valid.to(acc) / n_valid  # (N,) d loss / d (per-token loss)
            safe = targets.clamp(min=0)
            grad_hidden_needed, grad_weight_needed = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            grad_bias_needed = bias is not None and ctx.needs_input_grad[2]

            grad_weight = grad_bias = None
            if grad_weight_needed or grad_bias_needed:  # the head trains (full fine-tune of a tied head)
                needs = (grad_hidden_needed, grad_weight_needed, grad_bias_needed)
                lse, grad_hidden, grad_weight, grad_bias = _two_sweeps(
                    hidden, weight, bias, targets, valid, scale, chunk or VOCAB_CHUNK, acc, needs
                )
                if grad_hidden is not None:
                    grad_hidden = grad_hidden.to(hidden.dtype)
            else:  # frozen head (LoRA) or no gradient at all
                lse, expected = _one_sweep(hidden, weight, bias, chunk or ONLINE_CHUNK, acc, grad_hidden_needed)
                grad_hidden = None
                if expected is not None:
                    # d loss / d hidden = scale * (softmax @ W - W[target])
                    grad_hidden = expected.sub_(weight[safe].to(acc)).mul_(scale[:, None]).to(hidden.dtype)

            target_logit = (hidden.to(acc) * weight[safe].to(acc)).sum(dim=1)  # (N,) the target's logit, no (N, V)
            if bias is not None:
                target_logit = target_logit + bias[safe].to(acc)
            loss = ((lse - target_logit) * valid).sum() / n_valid
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
            return loss

        @staticmethod
        def backward(ctx, grad_loss):
            grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
            scaled = [None if g is None else g * grad_loss.to(g.dtype) for g in (grad_hidden, grad_weight, grad_bias)]
            return *scaled, None, None

    return LinearCrossEntropy


def linear_cross_entropy(hidden, weight, bias, targets, *, chunk: int | None = None):
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``targets`` (IGNORE_INDEX skipped), computed
    in vocabulary slices of ``chunk`` columns (None: VOCAB_CHUNK when the head trains, else ONLINE_CHUNK)
    without keeping the logits.

    Under autocast the head's products run in the autocast dtype, as ``nn.Linear`` would: the inputs are cast
    before the Function (so autograd casts their gradients back to fp32) and the softmax and the loss stay in
    fp32."""
    return apply_in_autocast_dtype(_linear_cross_entropy(), hidden, weight, bias, targets, chunk)


def causal_lm_loss(model, ids, *, inner=None):
    """Next-token loss of ``model`` on ``ids`` (B, T) with no padding. ``inner`` is the unwrapped model whose
    head is fused (see ``can_fuse``); None runs the model's own loss."""
    if inner is None:
        return model(input_ids=ids, labels=ids).loss
    with hidden_states_as_logits(inner) as head:
        hidden = model(input_ids=ids).logits  # (B, T, C): the head was an identity
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # (B*(T-1), C): position t predicts token t+1
    return linear_cross_entropy(hidden, head.weight, head.bias, ids[:, 1:].reshape(-1))
