"""One training contestant of the train bench, in its own process so its peak RSS is its own:

    python -m bench.train_one {reference,reference-tuned,reference-trl,reference-trl-lora,full,lora} \
        --budget 300 --out result.json [--model M] [--corpus C]

Every contestant trains the same base model on the same corpus split for the same optimizer-step wall time,
and is scored by the same function (``shelley.models.perplexity.perplexity``) on the same validation tokens.

``reference`` is the stock recipe as a user would run it. ``reference-tuned`` is the same recipe with shelley's
process tuning (``shelley.runtime.tune_allocator``) applied first, to show how much of shelley's lead is that
setting alone. ``reference-trl`` and ``reference-trl-lora`` are the strongest stock recipe (``bench.reference_trl``:
TRL's SFTTrainer, packed, bf16 where the CPU has it), full and LoRA. Every contestant is scored every
``--eval-every`` steps outside its budget, for the seconds it needs to reach a perplexity.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

CONTESTANTS = ("reference", "reference-tuned", "reference-trl", "reference-trl-lora", "full", "lora")
EVAL = {"max_length": 128, "stride": 128}  # the one evaluation every contestant gets (no overlap: cheap)


def _setup(model: str, corpus: Path, eval_tokens: int, work: Path):
    from shelley.config import load_config
    from shelley.data.corpus import open_corpus
    from shelley.finetune.methods import load_tokenizer_for_training
    from shelley.finetune.packing import encode_stream

    cfg = load_config(overrides=[f"model.name={model}", "model.max_length=128"])
    found = open_corpus(corpus, cfg.data)
    train_texts, val_texts = found.train, found.validation
    tok = load_tokenizer_for_training(cfg)
    stream = encode_stream(val_texts, tok, work / "eval-cache", "validation")[: eval_tokens + 1]
    return cfg, train_texts, val_texts, tok, stream


def score(model, stream) -> float:
    from shelley.models.perplexity import perplexity

    return perplexity(model, stream, batch_size=8, **EVAL)["perplexity"]


def run(
    impl: str,
    *,
    model: str,
    corpus: Path,
    budget_s: float,
    eval_tokens: int,
    eval_every: int,
    overrides: tuple[str, ...] = (),
    peak_seconds: float = 0.5,
) -> dict:
    from bench.peak import matmul_peak
    from shelley.runtime import cpu_has_fast_bf16, quiet_libraries, tune_allocator

    quiet_libraries()  # libraries' progress bars and notes would interleave with the bench's own lines
    if impl != "reference":  # the stock recipe runs with the stock allocator
        tune_allocator()
    with tempfile.TemporaryDirectory(prefix=f"bench-{impl}-") as tmp:
        work = Path(tmp)
        cfg, train_texts, val_texts, tok, stream = _setup(model, corpus, eval_tokens, work)
        # The machine's matmul rate right before and right after this contestant trains, in its own process:
        # a shared VM's speed drifts over a sitting, so a limit measured only at the sitting's start can be stale.
        before = {d: matmul_peak(peak_seconds, d) for d in ("fp32", "bf16") if d == "fp32" or cpu_has_fast_bf16()}
        t0 = time.perf_counter()
        if impl.startswith("reference-trl"):
            from bench.reference_trl import train_trl
            from shelley.finetune.methods import load_base_model

            cfg.train.method = "full"
            bf16 = cpu_has_fast_bf16()
            stats = train_trl(
                load_base_model(cfg), tok, train_texts, budget_s=budget_s, out_dir=work / "trainer",
                lora=impl.endswith("lora"), bf16=bf16, eval_every=eval_every, score=lambda m: score(m, stream),
            )  # fmt: skip
            net = stats.pop("model")
            result = stats | {"val_perplexity": score(net, stream), "precision": "bf16" if bf16 else "fp32"}
        elif impl.startswith("reference"):
            from bench.reference import train_reference
            from shelley.finetune.methods import load_base_model

            cfg.train.method = "full"
            net = load_base_model(cfg)
            stats = train_reference(
                net, tok, train_texts, budget_s=budget_s, out_dir=work / "trainer", eval_every=eval_every,
                score=lambda m: score(m, stream),
            )  # fmt: skip
            result = stats | {"val_perplexity": score(net, stream), "precision": "fp32"}
        else:
            from shelley.config import load_config
            from shelley.finetune.loop import train
            from shelley.runtime import resolve_precision

            run_cfg = load_config(
                f"smollm2-135m_{impl}_cpu",  # the packaged preset
                [
                    f"model.name={model}",
                    f"train.method={impl}",
                    "model.max_length=128",
                    "train.micro_batch_size=8",
                    "train.grad_accum=1",
                    f"train.time_budget_s={budget_s}",
                    "train.budget_clock=train",  # the reference is not evaluated while it trains
                    "train.steps=100000",
                    f"train.eval_every={eval_every}",
                    "train.sample_every=100000",
                    "train.checkpoint_every=100000",
                    f"eval.max_eval_tokens={eval_tokens}",
                    f"eval.stride={EVAL['stride']}",
                    *overrides,
                ],
            )
            res = train(run_cfg, train_texts, val_texts, work / "run", show_progress=False)
            rows = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
            train_s = {r["step"]: r["train_s"] for r in rows if r["kind"] == "train"}
            timeline = [
                {"step": r["step"], "train_seconds": train_s[r["step"]], "val_perplexity": r["val_perplexity"]}
                for r in rows
                if r["kind"] == "eval"
            ]
            result = {
                "steps": res.steps,
                "train_seconds": sum(train_s.values()) and max(train_s.values()),
                "real_tokens": res.tokens_seen,
                "tokens_per_second": res.tokens_per_second,
                "timeline": timeline,
                "val_perplexity": timeline[-1]["val_perplexity"] if timeline else float("nan"),
                "precision": resolve_precision(run_cfg.train.precision),
            }
        result["wall_seconds"] = time.perf_counter() - t0
        after = matmul_peak(peak_seconds, result["precision"])
        first = before[result["precision"]]["gflops"]
        result["own_peak"] = {"gflops": (first + after["gflops"]) / 2, "before": first, "after": after["gflops"]}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["impl"] = impl
    result["eval_tokens"] = len(stream) - 1
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("impl", choices=CONTESTANTS)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=300)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], help="config override for a shelley contestant")
    ap.add_argument("--peak-seconds", type=float, default=0.5, help="seconds per matmul shape of the own peak")
    args = ap.parse_args(argv)
    result = run(
        args.impl,
        model=args.model,
        corpus=args.corpus,
        budget_s=args.budget,
        eval_tokens=args.eval_tokens,
        eval_every=args.eval_every,
        overrides=tuple(args.set),
        peak_seconds=args.peak_seconds,
    )
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
