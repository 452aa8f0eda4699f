"""Where a training step's time goes inside the decoder layers: a stack of the model's own layers, forward +
backward on one bench micro-batch in the precision and attention kernel training would use, split by op into
matrix products and the rest:

    python -m bench.layers [--model smollm2-135m] [--layers 6] [--batch 8 --length 128] [--reps 8]

The layers are the cleanest part of a fine-tuning step (no loss head over the vocabulary, no optimizer, no
gradient clipping), so the share of the machine's matmul peak they reach is about the most the whole step can
reach. The weights are random (only the shapes matter for time), built from the model's config.
"""

from __future__ import annotations

import argparse
import statistics
import time

MATRIX_PRODUCTS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")


def _stack(model: str, layers: int, precision: str):
    """The model's decoder cut to ``layers`` blocks, randomly initialised, with training's attention kernel."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from shelley.config import load_config
    from shelley.finetune.methods import set_attention, training_attention
    from shelley.models.registry import resolve

    config = AutoConfig.from_pretrained(resolve(model))
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    net = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    cfg = load_config(overrides=[f"model.name={model}", "train.method=full", f"train.precision={precision}"])
    set_attention(net, training_attention(cfg, "cpu"))
    return net.model, config  # the decoder without the head: the head + loss is timed by bench.train_one runs


def run(model: str, layers: int, batch: int, length: int, reps: int, precision: str) -> dict:
    """Median step time of the stack, its rate counted on the linear layers' weights, and the op split."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    decoder, config = _stack(model, layers, precision)
    x = torch.randn(batch, length, config.hidden_size, requires_grad=True)  # (B, T, C) the embeddings' output
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with ctx:
            hidden = decoder(inputs_embeds=x, use_cache=False).last_hidden_state  # (B, T, C)
        hidden.float().square().mean().backward()  # a loss that touches every output, cheap next to the stack

    for _ in range(2):  # warm-up: oneDNN picks its kernels on the first calls
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
    ops = {e.key: e.self_cpu_time_total / 2 / 1e3 for e in prof.key_averages()}  # ms per step, by op
    linear = sum(p.numel() for n, p in decoder.named_parameters() if p.dim() == 2 and "embed" not in n)
    flops = 6 * batch * length * linear  # forward 2, backward 4 multiply-adds per weight and token
    step_s = statistics.median(times)
    matmul_ms = sum(ops.get(k, 0.0) for k in MATRIX_PRODUCTS)
    return {
        "step_ms": step_s * 1e3,
        "gflops": flops / step_s / 1e9,
        "mm_gflops": flops / (ops.get("aten::mm", 0.0) + ops.get("aten::addmm", 0.0)) * 1e3 / 1e9,
        "op_ms": sum(ops.values()),
        "matmul_ms": matmul_ms,
        "top_other": sorted(((k, v) for k, v in ops.items() if k not in MATRIX_PRODUCTS), key=lambda kv: -kv[1])[:6],
    }


def main(argv: list[str] | None = None) -> int:
    from bench.peak import matmul_peak
    from shelley.runtime import resolve_precision

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="preset, local directory or Hub id (its config only)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    ap.add_argument("--peak-seconds", type=float, default=0.5)
    args = ap.parse_args(argv)
    precision = resolve_precision(args.precision)
    peak = matmul_peak(args.peak_seconds, precision)["gflops"]
    r = run(args.model, args.layers, args.batch, args.length, args.reps, precision)
    print(f"{args.layers} decoder layers of {args.model}, {args.batch} x {args.length} tokens, {precision}")
    print(f"step {r['step_ms']:.1f} ms  {r['gflops']:.0f} GFLOP/s on the linear weights  "
          f"= {r['gflops'] / peak:.0%} of this machine's {peak:.0f} GFLOP/s matmul peak")  # fmt: skip
    print(f"matrix products {r['matmul_ms'] / r['op_ms']:.0%} of op time; the linear layers' own products "
          f"run at {r['mm_gflops']:.0f} GFLOP/s")  # fmt: skip
    print("the rest, ms a step: " + ", ".join(f"{k.removeprefix('aten::')} {v:.1f}" for k, v in r["top_other"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
