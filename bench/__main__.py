"""shelley's benchmark suite, side by side with the stock recipe, in one sitting:

    python -m bench [--quick] [--model smollm2-135m] [--corpus CSV] [--budget 300] [--out bench/results]

* train: two references, the plain-Trainer stock recipe (bench/reference.py) and the strongest stock recipe,
  TRL's SFTTrainer packed, in bf16 where the CPU has it (bench/reference_trl.py, full and LoRA), vs shelley full
  vs shelley LoRA, each in its own process for the same optimizer-step time (``--tuned-reference`` adds the
  stock recipe with shelley's allocator tuning); real tokens/s, peak RSS, validation perplexity by one function
  on the same tokens, how long shelley takes to reach the stock recipe's final perplexity, and how long each
  contestant takes to reach ``--target-perplexity`` (36). Each tokens/s is
  also put against this machine's limit, measured in the same sitting: the matmul rate (``matmul_peak``) in
  the precision the contestant trained in (fp32, or bf16 where the CPU has it in hardware) over the FLOPs one
  token costs (6 per parameter for a full fine-tune, 4 for LoRA, whose frozen weights need
  only the forward and the input gradient; the adapters' own small products are left out, as in issue 6).
* write: the eval workload (5 prompts x 4 samples x 120 new tokens, temperature 0.8): Hugging Face
  ``generate`` one sample at a time vs shelley's batched ``generate_texts``.
* data: ingest + clean + tokenize + pack of the novel and of larger synthetic corpora (the novel repeated
  with word-level perturbations so near-duplicate removal keeps them), with the slope of time vs size.

Writes bench/results/{train,write,data}.json and bench/results/summary.md. ``--quick`` shrinks every part
so the harness itself can be tested (in under 3 minutes with the real model, seconds with a tiny one).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.peak import matmul_peak
from shelley.io import atomic_write_text, write_json

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SHELLEY_DATA_DIR") or HERE.parents[1] / "shared" / "data")


def parameter_count(model: str) -> int:
    """Parameters of the base model (a tied head counted once, as it is multiplied once per token)."""
    from shelley.config import load_config
    from shelley.finetune.methods import load_base_model

    net = load_base_model(load_config(overrides=[f"model.name={model}", "train.method=full"]), for_training=False)
    return sum(p.numel() for p in net.parameters())


FLOPS_PER_PARAM = {"reference": 6, "reference-tuned": 6, "reference-trl": 6, "reference-trl-lora": 4}
FLOPS_PER_PARAM |= {"full": 6, "lora": 4}
# Like for like: shelley full against TRL's full fine-tune, shelley LoRA against TRL's LoRA.
TRL_PEER = {"full": "reference-trl", "lora": "reference-trl-lora"}


def add_limits(results: dict, peaks: dict[str, float], params: int) -> None:
    """Each contestant's tokens/s limit on this machine and the fraction of it reached, at the matmul peak of
    the precision it trained in (``peaks``: GFLOP/s by "fp32" / "bf16"). For a padding contestant (the stock
    recipe) also the fraction reached counting the padded positions it computes on."""
    for impl, r in results.items():
        gflops = peaks[r.get("precision", "fp32")]
        r["limit_tokens_per_s"] = gflops * 1e9 / (FLOPS_PER_PARAM[impl] * params)
        r["fraction_of_limit"] = r["tokens_per_second"] / r["limit_tokens_per_s"]
        if "own_peak" in r:  # the peak measured by the contestant's own process around its training
            r["own_limit_tokens_per_s"] = r["own_peak"]["gflops"] * 1e9 / (FLOPS_PER_PARAM[impl] * params)
            r["fraction_of_own_limit"] = r["tokens_per_second"] / r["own_limit_tokens_per_s"]
        if "padded_tokens_per_second" in r:
            r["padded_fraction_of_limit"] = r["padded_tokens_per_second"] / r["limit_tokens_per_s"]


def bench_train(args, out: Path) -> dict:
    from shelley.runtime import cpu_has_fast_bf16

    results = {}
    seconds_per_shape = 0.2 if args.quick else 2.0
    peak = matmul_peak(seconds_per_shape)
    print(f"[train] fp32 matmul peak now: {peak['gflops']:.0f} GFLOP/s", flush=True)
    # Where the CPU multiplies bf16 in hardware shelley trains in bf16 autocast (train.precision auto), so its
    # limit is the bf16 peak; elsewhere bf16 is emulated and nobody would train in it.
    peak_bf16 = matmul_peak(seconds_per_shape, "bf16") if cpu_has_fast_bf16() else None
    if peak_bf16:
        print(f"[train] bf16 matmul peak now: {peak_bf16['gflops']:.0f} GFLOP/s", flush=True)
    contestants = ("reference", "reference-trl", "reference-trl-lora", "full", "lora")
    contestants += ("reference-tuned",) if args.tuned_reference else ()
    for impl in contestants:
        target = out / f"train-{impl}.json"
        cmd = [
            sys.executable,
            "-m",
            "bench.train_one",
            impl,
            "--model",
            args.model,
            "--corpus",
            str(args.corpus),
            "--budget",
            str(args.budget),
            "--eval-tokens",
            str(args.eval_tokens),
            "--eval-every",
            str(args.eval_every),
            "--out",
            str(target),
            "--peak-seconds",
            str(seconds_per_shape / 4),
        ]
        print(f"[train] {impl}: {args.budget:.0f} s of training ...", flush=True)
        subprocess.run(cmd, check=True, cwd=HERE.parent)
        results[impl] = json.loads(target.read_text())
        target.unlink()
    ref = results["reference"]
    for impl in ("full", "lora"):
        r = results[impl]
        r["speedup_tokens_per_s"] = r["tokens_per_second"] / ref["tokens_per_second"]
        reached = [t for t in r["timeline"] if t["val_perplexity"] <= ref["val_perplexity"]]
        r["seconds_to_reference_perplexity"] = reached[0]["train_seconds"] if reached else None
        r["time_ratio_to_reference"] = (
            reached[0]["train_seconds"] / ref["train_seconds"] if reached and ref["train_seconds"] else None
        )
        trl = results[TRL_PEER[impl]]
        r["speedup_vs_trl"] = r["tokens_per_second"] / trl["tokens_per_second"]
        if "reference-tuned" in results:
            r["speedup_vs_tuned_reference"] = r["tokens_per_second"] / results["reference-tuned"]["tokens_per_second"]
    for impl in ("reference-trl", "reference-trl-lora", "reference-tuned"):
        if impl in results:
            results[impl]["speedup_tokens_per_s"] = results[impl]["tokens_per_second"] / ref["tokens_per_second"]
    for r in results.values():
        reached = [t for t in r.get("timeline", []) if t["val_perplexity"] <= args.target_perplexity]
        r["seconds_to_target_perplexity"] = reached[0]["train_seconds"] if reached else None
    params = parameter_count(args.model)
    peaks = {"fp32": peak["gflops"]} | ({"bf16": peak_bf16["gflops"]} if peak_bf16 else {})
    add_limits(results, peaks, params)
    return {
        "contestants": results,
        "matmul_peak": peak,
        "matmul_peak_bf16": peak_bf16,
        "parameters": params,
        "target_perplexity": args.target_perplexity,
    }


def bench_write(args) -> dict:
    import torch

    from shelley.config import GenerationConfig, load_config
    from shelley.data.books import BY_KEY
    from shelley.finetune.methods import load_base_model, load_tokenizer_for_training
    from shelley.generate import generate_texts

    cfg = load_config(overrides=[f"model.name={args.model}", "train.method=full"])
    model = load_base_model(cfg, for_training=False).eval()
    tok = load_tokenizer_for_training(cfg)
    prompts = list(cfg.eval.prompts or BY_KEY["shelley"].prompts)[: 2 if args.quick else 5]  # the novel's
    samples, new = (2, 16) if args.quick else (4, 120)
    gen = GenerationConfig(max_new_tokens=new, min_new_tokens=new, num_samples=samples, temperature=0.8)
    sampling = {
        "do_sample": True,
        "temperature": 0.8,
        "top_k": gen.top_k,
        "top_p": gen.top_p,
        "repetition_penalty": gen.repetition_penalty,
        "max_new_tokens": new,
        "min_new_tokens": new,
        "pad_token_id": tok.pad_token_id,
    }
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            ids = tok(p, return_tensors="pt")
            for s in range(samples):
                torch.manual_seed(s)
                model.generate(**ids, **sampling)
    hf = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate_texts(model, tok, prompts, gen)
    ours = time.perf_counter() - t0
    tokens = len(prompts) * samples * new
    return {
        "workload": f"{len(prompts)} prompts x {samples} samples x {new} new tokens, temperature 0.8",
        "hf_one_at_a_time": {"seconds": hf, "tokens_per_second": tokens / hf},
        "shelley_batched": {"seconds": ours, "tokens_per_second": tokens / ours},
        "time_ratio": ours / hf,
    }


def perturbed_copies(text: str, copies: int, seed: int = 0) -> str:
    """The novel ``copies`` times; every copy after the first swaps half its words for other words of the
    book, so its snippets are new text to the near-duplicate filter (the cost we measure is real work)."""
    rng = random.Random(seed)
    words = text.split(" ")
    vocab = sorted({w for w in words if w.isalpha()})  # sorted: set order changes with the hash seed
    out = [text]
    for _ in range(copies - 1):
        out.append(" ".join(rng.choice(vocab) if w.isalpha() and rng.random() < 0.5 else w for w in words))
    return "\n\n".join(out)


def bench_data(args) -> dict:
    from shelley.config import DataConfig, load_config
    from shelley.data.build import clean_kwargs
    from shelley.data.clean import clean_snippets
    from shelley.data.ingest import read_corpus
    from shelley.finetune.methods import load_tokenizer_for_training
    from shelley.finetune.packing import PackedBlocks, encode_stream

    tok = load_tokenizer_for_training(load_config(overrides=[f"model.name={args.model}"]))
    novel = (DATA / "frankenstein.txt").read_text(encoding="utf-8")
    rows = []
    sizes = (1, 2) if args.quick else (1, 10, 100)
    for copies in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
            path = Path(tmp) / "book.txt"
            path.write_text(perturbed_copies(novel, copies), encoding="utf-8")
            megabytes = path.stat().st_size / 1e6
            t0 = time.perf_counter()
            snippets, _ = read_corpus(path)
            t1 = time.perf_counter()
            kept, _ = clean_snippets(snippets, **clean_kwargs(DataConfig()))
            t2 = time.perf_counter()
            stream = encode_stream([s.text for s in kept], tok, Path(tmp) / "cache", "train")
            blocks = PackedBlocks(stream, 256)
            t3 = time.perf_counter()
        rows.append(
            {
                "copies": copies,
                "megabytes": megabytes,
                "rows": len(kept),
                "tokens": len(stream),
                "blocks": len(blocks),
                "seconds": {"ingest": t1 - t0, "clean": t2 - t1, "tokenize_pack": t3 - t2, "total": t3 - t0},
            }
        )
        print(f"[data] {copies}x: {rows[-1]['seconds']['total']:.2f} s", flush=True)
    xs = [r["megabytes"] for r in rows]
    ys = [r["seconds"]["total"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return {"sizes": rows, "seconds_per_megabyte": slope, "novel_seconds": rows[0]["seconds"]["total"]}


def _time_to_reference(r: dict) -> str:
    """The "time to the reference's perplexity" cell: seconds and the ratio to the reference's time."""
    if "seconds_to_reference_perplexity" not in r:  # not timed: the reference, and its tuned variant
        return "-"
    seconds, ratio = r["seconds_to_reference_perplexity"], r["time_ratio_to_reference"]
    if seconds is None:
        return "not reached"
    return f"{seconds:.1f} s" + (f" ({ratio:.2f}x)" if ratio is not None else "")


def summary_md(train: dict | None, write: dict | None, data: dict | None, commit: str = "") -> str:
    lines = ["# shelley bench", "", f"commit {commit or 'unknown'}", ""]
    if train:
        peak = train["matmul_peak"]["gflops"]
        bf16 = train.get("matmul_peak_bf16")
        target = train.get("target_perplexity", 36)
        lines += [
            f"fp32 matmul peak in this sitting: {peak:.0f} GFLOP/s"
            + (f", bf16 {bf16['gflops']:.0f} GFLOP/s" if bf16 else " (bf16 not in hardware)")
            + f"; {train['parameters'] / 1e6:.1f}M parameters (limit = the peak of the contestant's precision / "
            "(6 x parameters) per token for a full fine-tune, / (4 x parameters) for LoRA; own limit: the same "
            "from the peak its own process measured right before and after it trained)",
            "",
            "| train | precision | steps | real tokens/s | x stock | x TRL | of limit | of own limit | peak RSS MB "
            f"| val perplexity | time to stock ppl | time to ppl {target:g} |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for impl, r in train["contestants"].items():
            to_target = r.get("seconds_to_target_perplexity")
            lines.append(
                f"| {impl} | {r.get('precision', 'fp32')} | {r['steps']} | {r['tokens_per_second']:.1f} "
                f"| {r.get('speedup_tokens_per_s', 1.0):.2f} "
                + (f"| {r['speedup_vs_trl']:.2f} " if "speedup_vs_trl" in r else "| - ")
                + f"| {r['fraction_of_limit']:.0%} of {r['limit_tokens_per_s']:.0f} "
                + (
                    f"| {r['fraction_of_own_limit']:.0%} of {r['own_limit_tokens_per_s']:.0f} "
                    if "fraction_of_own_limit" in r
                    else "| - "
                )
                + f"| {r['peak_rss_mb']:.0f} "
                f"| {r['val_perplexity']:.2f} | {_time_to_reference(r)} "
                + (f"| {to_target:.1f} s |" if to_target is not None else "| not reached |")
            )
        lines.append("")
        c = train["contestants"]
        if all(k in c for k in ("full", "lora", "reference-trl", "reference-trl-lora")):
            lines += [
                f"against the stronger reference (TRL SFTTrainer, packed, {c['reference-trl']['precision']}): shelley "
                f"full {c['full']['speedup_vs_trl']:.2f}x its tokens/s, LoRA {c['lora']['speedup_vs_trl']:.2f}x "
                "TRL's LoRA",
                "",
            ]
        ref = train["contestants"].get("reference", {})
        if ref.get("padded_tokens"):
            # Where the stock recipe's GEMMs already run near the peak, skipping its padding is most of what
            # a faster trainer can gain: padded / real tokens is that multiple.
            lines += [
                f"reference padding: {1 - ref['real_tokens'] / ref['padded_tokens']:.0%} of the positions it "
                f"computes on; counting them it runs at {ref['padded_fraction_of_limit']:.0%} of its limit, so "
                f"dropping the padding alone at that rate would be {ref['padded_tokens'] / ref['real_tokens']:.2f}x "
                "its real tokens/s",
                "",
            ]
    if write:
        lines += [
            f"write ({write['workload']}): HF one at a time {write['hf_one_at_a_time']['seconds']:.1f} s "
            f"({write['hf_one_at_a_time']['tokens_per_second']:.1f} tokens/s), shelley "
            f"{write['shelley_batched']['seconds']:.1f} s ({write['shelley_batched']['tokens_per_second']:.1f} "
            f"tokens/s): x{write['time_ratio']:.2f} the time",
            "",
        ]
    if data:
        lines += [f"data: the novel in {data['novel_seconds']:.2f} s; {data['seconds_per_megabyte']:.2f} s per MB", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small run that checks the harness")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corpus", type=Path, default=DATA / "frankenstein_chunks.csv")
    ap.add_argument("--budget", type=float, help="optimizer-step seconds per train contestant")
    ap.add_argument("--eval-tokens", type=int)
    ap.add_argument("--eval-every", type=int)
    ap.add_argument(
        "--tuned-reference",
        action="store_true",
        help="also run the stock recipe with shelley's allocator tuning (shows how much of the lead that is)",
    )
    ap.add_argument("--target-perplexity", type=float, default=36.0, help="report each contestant's time to this")
    ap.add_argument("--only", choices=["train", "write", "data"], action="append")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    args.budget = args.budget or (6.0 if args.quick else 300.0)
    args.eval_tokens = args.eval_tokens or (256 if args.quick else 2048)
    # The time to the reference perplexity is only as fine as this: every 2 steps was 36-40 s of a 300 s budget
    # on a slow CPU (full fine-tune steps of 18-20 s), too coarse to judge a 0.25x target.
    args.eval_every = args.eval_every or 1
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.only or ["train", "write", "data"]
    meta = {"model": args.model, "quick": args.quick, "commit": _commit(), "machine": f"{os.cpu_count()} CPU cores"}
    results: dict[str, dict | None] = {"train": None, "write": None, "data": None}
    for part in parts:
        t0 = time.perf_counter()
        results[part] = {
            "train": bench_train,
            "write": lambda a, _o: bench_write(a),
            "data": lambda a, _o: bench_data(a),
        }[part](args, args.out)
        seconds = {"bench_seconds": time.perf_counter() - t0}
        write_json(args.out / f"{part}.json", meta | seconds | {part: results[part]})
    md = summary_md(results["train"], results["write"], results["data"], meta["commit"])
    atomic_write_text(args.out / "summary.md", md)
    print(md)
    return 0


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
