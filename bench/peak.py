"""This machine's matmul rate now: the limit a training contestant's tokens/s is put against."""

from __future__ import annotations

import time

# The GEMM shapes of one 1,024-token micro-batch through SmolLM2-135M (hidden 576, MLP 1,536, a 2,048-column
# slice of the 49,152-word head), (M, K, N): the shapes training spends its time in.
PEAK_SHAPES = ((1024, 576, 1536), (1024, 1536, 576), (1024, 576, 576), (1024, 576, 2048))


def matmul_peak(seconds_per_shape: float = 1.0, dtype: str = "fp32") -> dict:
    """This machine's matmul rate now in ``dtype`` (fp32 or bf16), with torch's default threads: the best
    GFLOP/s of PEAK_SHAPES, each repeated for about ``seconds_per_shape`` after a warm-up."""
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    rates = {}
    for m, k, n in PEAK_SHAPES:
        a, b = torch.randn(m, k, dtype=torch_dtype), torch.randn(k, n, dtype=torch_dtype)
        out = torch.empty(m, n, dtype=torch_dtype)
        for _ in range(3):
            torch.mm(a, b, out=out)
        reps, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds_per_shape:
            torch.mm(a, b, out=out)
            reps += 1
        rates[f"{m}x{k}x{n}"] = 2 * m * k * n * reps / elapsed / 1e9
    return {"gflops": max(rates.values()), "by_shape": rates, "threads": torch.get_num_threads(), "dtype": dtype}
