"""The attention kernels a training step can use, timed forward + backward on one layer's shape:

    python -m bench.attention [--batch 8 --length 128 --heads 9 --kv-heads 3 --head-dim 64] [--reps 30]

``sdpa`` is ``torch.nn.functional.scaled_dot_product_attention`` with torch's own choice of backend (what
transformers' "sdpa" calls), ``eager`` is transformers' "eager": two matmuls and a softmax in fp32. The
defaults are one SmolLM2-135M layer on a bench micro-batch. What ``train.attention: auto`` rests on.
"""

from __future__ import annotations

import argparse
import time


def _kernels(length: int, groups: int):
    import torch

    causal = torch.full((length, length), float("-inf")).triu(1)  # (T, T): the future is masked

    def expand(kv):  # (B, KV, T, D) -> (B, KV * groups, T, D): every query head gets its key/value head
        b, kv_heads, t, d = kv.shape
        return kv[:, :, None].expand(b, kv_heads, groups, t, d).reshape(b, kv_heads * groups, t, d)

    def sdpa(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, expand(k), expand(v), is_causal=True)

    def eager(q, k, v):
        scores = torch.matmul(q, expand(k).transpose(-1, -2)) * q.shape[-1] ** -0.5 + causal.to(q.dtype)  # (B,H,T,T)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(weights, expand(v))  # (B, H, T, D)

    return {"sdpa": sdpa, "eager": eager}


def time_kernel(fn, shape: tuple[int, int, int, int, int], dtype, reps: int) -> dict[str, float]:
    """Mean milliseconds of ``fn``'s forward and backward over ``reps`` calls, after a warm-up."""
    import torch

    batch, heads, kv_heads, length, dim = shape
    torch.manual_seed(0)
    q = torch.randn(batch, heads, length, dim, dtype=dtype, requires_grad=True)
    k = torch.randn(batch, kv_heads, length, dim, dtype=dtype, requires_grad=True)
    v = torch.randn(batch, kv_heads, length, dim, dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, heads, length, dim, dtype=dtype)
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
