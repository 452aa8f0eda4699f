"""Kill test: SIGKILL a training run at random points (mid-step and mid-checkpoint), resume it, and compare
the final weights and loss curve with an uninterrupted run of the same seed.

    python -m bench.kill_resume [--runs 10] [--model DIR | --preset] [--corpus FILE] [--seed 0]

Without ``--model`` it builds a tiny random Llama with a byte-level BPE tokenizer (the path of the real
presets is the same loop). ``--preset`` runs the real thing: SmolLM2-135M with the `shelley run` preset
(smollm2-135m_full_cpu), a fixed number of steps, checkpoints by step and by time (1.6 GB each: model and
AdamW state). Prints one line per run and writes ``bench/results/kill_resume.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

RESULTS = Path(__file__).parent / "results"
STEPS = 24
SETS = [
    "train.method=full",
    f"train.steps={STEPS}",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=2",
    "train.eval_every=1000",
    "train.sample_every=1000",
    "train.micro_batch_size=4",
    "train.learning_rate=3e-3",
    "train.warmup_steps=2",
    "model.max_length=32",
    "eval.stride=16",
    "data.split=random",
]


def tiny_model(out: Path, corpus: Path) -> Path:
    """A 2-layer random Llama and a BPE tokenizer trained on the corpus, saved as a model dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from shelley.gpt.tokenizer import train_tokenizer

    tok = train_tokenizer([corpus.read_text(encoding="utf-8")[:20000]], 400)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        hidden_size=32,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# The real preset, shortened to a fixed number of steps; checkpoints every 3 steps and every 10 s of training.
PRESET_SETS = [
    "train.method=full",
    "train.steps=8",
    "train.checkpoint_every=3",
    "train.checkpoint_every_s=10",
    "train.keep_checkpoints=2",
    "train.eval_every=1000",
    "train.sample_every=1000",
    "train.micro_batch_size=4",
    "model.max_length=64",
    "data.split=random",
]
CONFIG: list[str] = []  # --config for every command (the preset mode sets it)


def train_cmd(corpus: Path, model: Path, run: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "shelley", "train", str(corpus), "--model", str(model), "--run-dir", str(run)]
    for s in SETS:
        cmd += ["--set", s]
    return cmd + CONFIG + list(extra)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def weights(run: Path) -> dict:
    return load_file(run / "model" / "model.safetensors")


def kill_at(cmd: list[str], run: Path, where: str, at_step: int, timeout: float = 300) -> str:
    """Start training and SIGKILL it once ``at_step`` is logged: right away (mid-step) or, for
    ``checkpoint``, as soon as a checkpoint temp dir appears after that step. Returns what was hit."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + timeout
    hit = "finished before the kill"
    while time.time() < deadline and proc.poll() is None:
        done = losses(run) if metrics.exists() else {}
        if done and max(done) >= at_step:
            if where == "checkpoint":
                tmp = list((run / "checkpoints").glob(".tmp-step-*"))
                if not tmp:
                    time.sleep(0.001)
                    continue
                hit = f"mid-checkpoint ({tmp[0].name})"
            else:
                hit = f"after step {max(done)} was logged (mid-step)"
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    return hit


def run_once(corpus: Path, model: Path, work: Path, i: int, rng: random.Random, straight: dict) -> dict:
    run = work / f"killed-{i}"
    where = "checkpoint" if i % 2 else "step"
    t0 = time.perf_counter()
    # after the first checkpoint (a kill before it leaves nothing to resume), before the end
    at = rng.randint(3, STEPS - 3) if not CONFIG else rng.randint(4, 7)  # preset: first checkpoint at step 3
    hit = kill_at(train_cmd(corpus, model, run), run, where, at)
    resume = subprocess.run(train_cmd(corpus, model, run, "--resume"), capture_output=True, text=True)
    if resume.returncode:
        return {"run": i, "kill": hit, "ok": False, "error": resume.stderr.strip().splitlines()[-1:]}
    a, b = straight["weights"], weights(run)
    max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    same_losses = losses(run) == straight["losses"]
    return {
        "run": i,
        "kill": hit,
        "target_step": at,
        "ok": max_diff == 0.0 and same_losses,
        "max_weight_diff": max_diff,
        "losses_equal": same_losses,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--preset", action="store_true", help="SmolLM2-135M with the `shelley run` preset")
    ap.add_argument(
        "--corpus",
        type=Path,
        default=Path(os.environ.get("SHELLEY_DATA_DIR", "../shared/data")) / "frankenstein_chunks.csv",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "kill_resume.json")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    if args.preset:
        SETS[:] = PRESET_SETS
        CONFIG[:] = ["--config", "smollm2-135m_full_cpu"]
        from shelley.models.registry import resolve

        args.model = Path(resolve("smollm2-135m"))
    with tempfile.TemporaryDirectory(prefix="shelley-kill-") as tmp:
        work = Path(tmp)
        model = args.model or tiny_model(work / "model", args.corpus)
        t0 = time.perf_counter()
        subprocess.run(train_cmd(args.corpus, model, work / "straight"), check=True, capture_output=True)
        straight = {"weights": weights(work / "straight"), "losses": losses(work / "straight")}
        straight_s = round(time.perf_counter() - t0, 1)
        print(json.dumps({"uninterrupted_seconds": straight_s}))
        rows = []
        for i in range(args.runs):
            row = run_once(args.corpus, model, work, i, rng, straight)
            rows.append(row)
            print(json.dumps(row))
    summary = {"runs": args.runs, "passed": sum(r["ok"] for r in rows), "uninterrupted_seconds": straight_s}
    summary |= {"model": str(model), "sets": SETS, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{summary['passed']}/{args.runs} kill-and-resume runs bit-identical to the uninterrupted run")
    return 0 if summary["passed"] == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
