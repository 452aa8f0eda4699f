"""The attention kernels a training step can use, timed forward + backward on one layer's shape:

    python -m bench.attention [--batch 8 --length 128 --heads 9 --kv-heads 3 --head-dim 64] [--reps 30]

``sdpa`` and ``eager`` are transformers' own attention functions (``sdpa_attention_forward``, torch's SDPA with
its own choice of backend; ``eager_attention_forward``, two matmuls and a softmax in fp32), called as a
Llama-family layer calls them. The defaults are one SmolLM2-135M layer on a bench micro-batch. What
``train.attention: auto`` rests on.
"""

from __future__ import annotations

import argparse
import time


def _kernels(length: int, groups: int):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import eager_attention_forward

    layer = torch.nn.Module()  # what both functions read off an attention layer
    layer.num_key_value_groups, layer.is_causal = groups, True  # every group of query heads shares a key/value head
    causal = torch.full((length, length), float("-inf")).triu(1)[None, None]  # (1, 1, T, T): the future is masked

    def sdpa(q, k, v):  # (B, H, T, D), (B, KV, T, D) x 2 -> (B, T, H, D)
        return sdpa_attention_forward(layer, q, k, v, None, scaling=q.shape[-1] ** -0.5)[0]

    def eager(q, k, v):
        return eager_attention_forward(layer, q, k, v, causal.to(q.dtype), scaling=q.shape[-1] ** -0.5)[0]

    return {"sdpa": sdpa, "eager": eager}


def time_kernel(fn, shape: tuple[int, int, int, int, int], dtype, reps: int) -> dict[str, float]:
    """Mean milliseconds of ``fn``'s forward and backward over ``reps`` calls, after a warm-up."""
    import torch

    batch, heads, kv_heads, length, dim = shape
    torch.manual_seed(0)
    q = torch.randn(batch, heads, length, dim, dtype=dtype, requires_grad=True)
    k = torch.randn(batch, kv_heads, length, dim, dtype=dtype, requires_grad=True)
    v = torch.randn(batch, kv_heads, length, dim, dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, length, heads, dim, dtype=dtype)  # the output's (B, T, H, D)
    for _ in range(3):
        fn(q, k, v).backward(grad)
    forward = backward = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn(q, k, v)
        t1 = time.perf_counter()
        out.backward(grad)
        forward, backward = forward + t1 - t0, backward + time.perf_counter() - t1
    return {"forward_ms": forward / reps * 1e3, "backward_ms": backward / reps * 1e3}


def run(shape: tuple[int, int, int, int, int], reps: int, dtypes: tuple[str, ...]) -> list[dict]:
    import torch

    heads, kv_heads, length = shape[1], shape[2], shape[3]
    rows = []
    for name in dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        for kernel, fn in _kernels(length, heads // kv_heads).items():
            rows.append({"dtype": name, "kernel": kernel} | time_kernel(fn, shape, dtype, reps))
    return rows


def main(argv: list[str] | None = None) -> int:
    from shelley.runtime import cpu_has_fast_bf16

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    if args.heads % args.kv_heads:
        ap.error(f"--heads {args.heads} is not a multiple of --kv-heads {args.kv_heads}")
    shape = (args.batch, args.heads, args.kv_heads, args.length, args.head_dim)
    # bf16 without hardware support is emulated: its timings would say nothing about a bf16 training step.
    dtypes = ("fp32", "bf16") if cpu_has_fast_bf16() else ("fp32",)
    print(f"attention forward + backward, (batch, heads, kv heads, length, head dim) = {shape}, {args.reps} reps")
    for r in run(shape, args.reps, dtypes):
        total = r["forward_ms"] + r["backward_ms"]
        print(f"{r['dtype']:5s} {r['kernel']:6s} forward {r['forward_ms']:7.2f} ms  backward {r['backward_ms']:7.2f} ms"
              f"  total {total:7.2f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
