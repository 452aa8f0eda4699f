"""The one training loop, on accelerate: full, LoRA, QLoRA and the scratch GPT all run through ``train``.

``accelerate launch -m shelley.cli train ...`` scales it to several GPUs or machines unchanged: every
process draws its own micro-batches from the same deterministic order (see ``packing.micro_batch_indices``).

Run directory layout::

    run_dir/config.yaml         the full config of the run (checked on --resume)
    run_dir/metrics.jsonl       one JSON line per step / eval
    run_dir/samples.jsonl       sample generations every train.sample_every steps
    run_dir/loss.png            train and validation loss curves
    run_dir/checkpoints/step-N  accelerate state (model, optimizer, scheduler, RNG) + trainer_state.json
    run_dir/model/              the fine-tuned model (full), merged model (lora --merge) or the scratch GPT
                                exported as GPT-2, with tokenizer
    run_dir/tokenizer/          scratch: the tokenizer trained (or loaded) at the start, reused by --resume
    run_dir/adapter/            the PEFT adapter (lora, qlora), with tokenizer
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shelley.config import ShelleyConfig
from shelley.errors import ShelleyError, TrainingInterrupted
from shelley.finetune.loss import can_fuse, causal_lm_loss
from shelley.finetune.packing import PackedBlocks, encode_stream, micro_batch_indices

CALIBRATION_STEPS = 3  # steps timed before the cosine horizon is first fitted to a time budget
FUSED_ADAMW_DEVICES = ("cpu", "cuda", "mps")  # torch has a fused AdamW kernel there
PACE_WINDOW = 10  # recent optimizer steps whose mean duration predicts the next ones

# Keys that may change between a run and its --resume without changing what the run computes so far.
RESUMABLE_CHANGES = {
    "train.steps",
    "train.time_budget_s",
    "train.budget_clock",
    "train.eval_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.merge",
}


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    stopped_early: bool
    train_seconds: float
    tokens_seen: int
    tokens_per_second: float
    last_loss: float
    evals: list[dict[str, Any]] = field(default_factory=list)
    output_dir: Path | None = None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checkpoint(ckpt: Path) -> bool:
    """True when every file the manifest lists is there with its size and SHA-256 (a torn or edited
    checkpoint fails)."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        return all(
            (ckpt / name).is_file()
            and (ckpt / name).stat().st_size == meta["bytes"]
            and _sha256(ckpt / name) == meta["sha256"]
            for name, meta in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def latest_checkpoint(run_dir: Path, *, verify: bool = False) -> Path | None:
    """The newest complete checkpoint; with ``verify`` the newest whose manifest hashes check out."""
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    ckpts = [c for c in ckpts if (c / "trainer_state.json").exists() and (c / MANIFEST).exists()]
    if verify:
        ckpts = [c for c in ckpts if verify_checkpoint(c)]
    return ckpts[-1] if ckpts else None


def check_resume(run_dir: Path, cfg: ShelleyConfig) -> Path:
    ckpt = latest_checkpoint(run_dir, verify=True)
    if ckpt is None:
        raise ShelleyError(f"--resume: {run_dir} has no checkpoint to resume from; drop --resume to start fresh")
    newest = latest_checkpoint(run_dir)
    if newest != ckpt:
        import warnings

        warnings.warn(f"checkpoint {newest} fails its manifest check; resuming from {ckpt}", stacklevel=2)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    old, new = _flatten(saved), _flatten(cfg.model_dump(mode="json"))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ShelleyError(
            f"--resume: the config differs from the checkpoint's in {', '.join(changed)}; "
            f"resume with the saved {run_dir / 'config.yaml'} or start a new run dir"
        )
    return ckpt


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there bf16 matmuls run about twice
    as fast as fp32 (measured 390 vs 170 GFLOP/s on 2 AMD Zen 4 cores); elsewhere they are emulated and slower.
    """
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up defensively
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def mixed_precision(precision: str) -> str:
    """The accelerate mixed_precision for train.precision: "bf16", "fp16" or "no"."""
    import torch

    if precision == "auto":
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "no"
        return "bf16" if cpu_has_fast_bf16() else "no"
    return {"fp32": "no"}.get(precision, precision)


def _forget_other_precision(precision: str) -> None:
    """Let this run have its own mixed precision when an earlier run in the same process (a notebook, a test
    session) trained in another. accelerate keeps one ``AcceleratorState`` per process and refuses a second
    ``Accelerator`` with another ``mixed_precision``; the process group (``PartialState``) is kept."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, precision):
        AcceleratorState._reset_state(reset_partial_state=False)


def _fsync(path: Path) -> None:
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk, so the rename that follows publishes data that
    survives a power cut, not just a process kill."""
    for path in [*sorted(root.rglob("*"), reverse=True), root]:
        _fsync(path)


def _save_checkpoint(accelerator, run_dir: Path, step: int, keep: int, state: dict[str, Any]) -> Path:
    """accelerate state into a temp dir, a manifest of SHA-256 hashes, fsync, then one rename: a crash never
    leaves a half checkpoint under a final name, and a damaged one is detected on resume."""
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:06d}"
    tmp = ckpt_root / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            files = {
                str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=2))
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            _fsync(ckpt_root)  # the rename itself must reach the disk
            for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(run_dir)
        raise ShelleyError(
            f"could not write checkpoint {final} ({exc.strerror or exc}); free disk space or point train.run_dir "
            f"at a writable disk. The previous checkpoint is intact: {last or 'none'}"
        ) from None
    accelerator.wait_for_everyone()
    return final


def plot_loss(metrics_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="#4a6fa5", alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", color="#c0392b")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("shelley training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def train(
    cfg: ShelleyConfig,
    train_texts: list[str],
    val_texts: list[str],
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    model=None,
    tokenizer=None,
    show_progress: bool = True,
    stop_after: int | None = None,
    final_eval: bool = True,
) -> TrainResult:
    """Train per ``cfg`` and save outputs in ``run_dir``.

    ``model``/``tokenizer`` may be passed in (tests build tiny random models); otherwise they are loaded from
    ``cfg.model``. ``stop_after`` ends the process's work after that many steps as if it were interrupted
    (checkpoint written, no final outputs), which is how tests exercise resume. ``final_eval=False`` skips the
    validation pass at the end (``shelley run`` scores the model itself right after).

    With ``train.time_budget_s`` the loop never starts a step it cannot finish in the budget, and the cosine
    horizon is re-fitted every step from the recent step time and the time left (evals and checkpoints eat
    into it too, unless ``train.budget_clock`` is "train"), so the learning rate reaches zero when the budget
    runs out, not before and not after.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from shelley.finetune.methods import load_base_model, load_tokenizer_for_training, prepare_for_method
    from shelley.runtime import tune_allocator

    tune_allocator()
    run_dir = Path(run_dir)
    tc = cfg.train
    if tc.method == "scratch":
        from shelley.gpt.setup import check_scratch_config

        check_scratch_config(cfg, tokenizer_given=tokenizer is not None)  # before anything is written
    from shelley.io import check_output_dir, write_json

    check_output_dir(run_dir, overwrite=True, flag="--run-dir")  # writable? (existing runs are handled below)
    ckpt = None
    if resume:
        ckpt = check_resume(run_dir, cfg)
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ShelleyError(f"run dir {run_dir} already exists; pass --overwrite, --resume, or another run dir")
        shutil.rmtree(run_dir)

    precision = mixed_precision(tc.precision)
    _forget_other_precision(precision)
    accelerator = Accelerator(
        gradient_accumulation_steps=tc.grad_accum,
        mixed_precision=precision,
        cpu=not torch.cuda.is_available(),
    )
    set_seed(tc.seed)
    # A set-up error (bad tokenizer, corpus smaller than one block, ...) leaves no half-made run dir behind.
    with _removed_on_error(run_dir, enabled=not resume and accelerator.is_main_process):
        if accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
                _write_corpus(run_dir, train_texts, val_texts)

        if tc.method == "scratch":
            from shelley.gpt.setup import scratch_model, scratch_tokenizer

            main = accelerator.is_main_process
            tokenizer = tokenizer or scratch_tokenizer(cfg, train_texts, run_dir, main_process=main)
            model = model if model is not None else scratch_model(cfg, tokenizer)
        else:
            tokenizer = tokenizer or load_tokenizer_for_training(cfg)
            model = model if model is not None else load_base_model(cfg)
            model = prepare_for_method(model, cfg)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tc.compile:
            # Compiled before accelerate wraps it; unwrap_model(keep_torch_compile=False) gives the plain module back.
            model = torch.compile(model)

        block = cfg.model.max_length
        cache = run_dir / "cache"
        # Tokenize + pack once: rank 0 writes the memmap cache, the other ranks wait, then read it.
        with accelerator.main_process_first():
            train_blocks = PackedBlocks(encode_stream(train_texts, tokenizer, cache, "train"), block)
            val_stream = encode_stream(val_texts, tokenizer, cache, "validation")
        if len(train_blocks) == 0:
            raise ShelleyError(
                f"the training text has {len(train_blocks.stream)} tokens, fewer than one block of "
                f"model.max_length={block}; lower model.max_length or use a bigger corpus"
            )

    params = [p for p in model.parameters() if p.requires_grad]
    # Weight decay on matrices only: decaying biases and LayerNorm gains only pulls them off their useful values.
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": tc.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if tc.method == "qlora":
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(groups, lr=tc.learning_rate)
    else:
        # The fused kernel updates every tensor in one pass instead of a chain of foreach ops: on 2 CPU cores
        # a SmolLM2-135M full step's optimizer time drops from ~0.35 s to ~0.15 s. Same math (torch tests it
        # against the reference implementation); the Trainer uses it by default too.
        optimizer = _adamw(groups, tc.learning_rate, accelerator.device.type)
    # The cosine horizon is normally train.steps. With a time budget it is re-estimated from the measured
    # step time after a few steps, so the learning rate still decays to zero when the budget runs out
    # instead of being cut off at its peak. LambdaLR reads the horizon each step.
    horizon = {"steps": tc.steps}

    def lr_lambda(s: int) -> float:
        if s < tc.warmup_steps:
            return (s + 1) / (tc.warmup_steps + 1)
        progress_ = min(1.0, (s - tc.warmup_steps) / max(1, horizon["steps"] - tc.warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress_))

    model, optimizer = accelerator.prepare(model, optimizer)
    loss_head = _fused_loss_model(accelerator, model, tc)
    # The scheduler stays ours (registered so checkpoints carry it): accelerate's wrapper would step it once per
    # process, so N processes would run the schedule N times faster than one process with the same global batch.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, lr_lambda)
    accelerator.register_for_checkpointing(scheduler)

    start_step = 0
    tokens_before = 0
    if ckpt is not None:
        try:
            accelerator.load_state(str(ckpt))
        except (RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as exc:
            # UnpicklingError: torch.load(weights_only=True) refused something that is not plain tensors.
            raise ShelleyError(
                f"--resume: checkpoint {ckpt} does not fit this model ({str(exc).splitlines()[0][:160]}); "
                "resume with the config the run was started with, or start a new run dir"
            ) from None
        state = json.loads((ckpt / "trainer_state.json").read_text())
        start_step, tokens_before = state["step"], state["tokens_seen"]
        horizon["steps"] = state.get("horizon", tc.steps)

    metrics_path = run_dir / "metrics.jsonl"
    if ckpt is not None and accelerator.is_main_process:
        _truncate_metrics(metrics_path, start_step)  # steps after the checkpoint are about to be redone
    world, rank = accelerator.num_processes, accelerator.process_index
    evals: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    tokens_seen = tokens_before
    step = start_step
    last_loss = float("nan")
    stopped_early = False
    step_times: list[float] = []

    def evaluate(at_step: int) -> dict[str, Any]:
        from shelley.eval.perplexity import perplexity

        with _without_autocast(_unwrap(accelerator, model)) as net:
            res = perplexity(
                net,
                val_stream,
                max_length=block,
                stride=cfg.eval.stride,
                batch_size=tc.micro_batch_size,
                max_tokens=cfg.eval.max_eval_tokens,
            )
        row = {
            "kind": "eval",
            "step": at_step,
            "val_loss": res["nll"],
            "val_perplexity": res["perplexity"],
            "val_tokens": res["tokens"],
        }
        evals.append(row)
        _log(metrics_path, row, accelerator)
        return row

    def write_samples(at_step: int) -> None:
        from shelley.data.books import corpus_prompts
        from shelley.generate import generate_texts

        gen = cfg.generation.model_copy(
            # At most half the context, so the prompts keep room (a tiny scratch model may see 64 tokens).
            update={"max_new_tokens": min(60, cfg.generation.max_new_tokens, max(1, block // 2)), "num_samples": 1}
        )
        prompts = cfg.eval.prompts or corpus_prompts(val_texts)
        texts = generate_texts(_inference_model(accelerator, model, tokenizer), tokenizer, prompts, gen)
        with (run_dir / "samples.jsonl").open("a") as fh:
            for p, t in zip(prompts, texts, strict=True):
                fh.write(json.dumps({"step": at_step, "prompt": p, "text": t}) + "\n")

    progress = _progress(show_progress and accelerator.is_main_process)
    task = progress.add_task("training", total=tc.steps, completed=start_step, loss=float("nan"), lr=0.0, tps=0.0)
    skipped = 0
    model.train()
    with progress, _stop_on_signals() as stop:
        while step < tc.steps:
            step_start = time.perf_counter()
            losses = []
            bad = False  # a non-finite loss in this optimizer step (nan_policy skip)
            for k in range(tc.grad_accum):
                micro = (step * tc.grad_accum + k) * world + rank
                ids = train_blocks.batch(micro_batch_indices(len(train_blocks), tc.micro_batch_size, tc.seed, micro))
                ids = ids.to(accelerator.device)
                with accelerator.accumulate(model), _oom_guard(cfg, step + 1, run_dir):
                    with accelerator.autocast():  # the fused head runs outside the model's own forward
                        loss = causal_lm_loss(model, ids, inner=loss_head)
                    finite = torch.isfinite(loss.detach()).float().reshape(1)
                    if world > 1:  # every rank must agree, or one would wait forever in backward's all-reduce
                        finite = accelerator.gather(finite).min().reshape(1)
                    if not bool(finite.item()):
                        if tc.nan_policy == "stop" or skipped >= tc.max_skipped_steps:
                            last = latest_checkpoint(run_dir)
                            raise ShelleyError(
                                f"loss became {float(loss.detach())} at step {step + 1}; training stopped"
                                + (f" after skipping {skipped} steps" if skipped else "")
                                + f". Last good checkpoint: {last or 'none'}. Lower train.learning_rate, use "
                                "precision fp32, or set train.nan_policy=skip"
                            )
                        bad = True
                    else:
                        accelerator.backward(loss)
                    if accelerator.sync_gradients and not bad:
                        accelerator.clip_grad_norm_(params, tc.max_grad_norm)
                    if not bad:
                        optimizer.step()  # (accelerate makes this a no-op until the last micro-batch)
                    if accelerator.sync_gradients:
                        scheduler.step()  # once per optimizer step, skipped or not: the schedule counts steps
                    optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                tokens_seen += ids.numel() * world
            step += 1
            if bad:
                skipped += 1
                _log(metrics_path, {"kind": "skip", "step": step, "reason": "non-finite loss"}, accelerator)
            finite_losses = [x for x in losses if math.isfinite(x)] or [float("nan")]
            last_loss = sum(finite_losses) / len(finite_losses)
            if world > 1:  # log the mean over ranks: the loss of the global batch, as one process would see it
                last_loss = float(accelerator.reduce(torch.tensor([last_loss], device=accelerator.device), "mean"))
            elapsed = time.perf_counter() - t0
            # Throughput counts optimizer-step time only: evals, samples and checkpoints are not training.
            step_times.append(time.perf_counter() - step_start)
            recent = step_times[-PACE_WINDOW:]
            pace = sum(recent) / len(recent)
            train_s = sum(step_times)  # optimizer-step time only (no evals, samples, checkpoints)
            spent = elapsed if tc.budget_clock == "wall" else train_s  # what time_budget_s counts
            if world > 1 and tc.time_budget_s is not None:
                # Each rank times itself, so near the end of the budget one rank could stop while another starts
                # a step and waits forever in its all-reduce, and their cosine horizons (so learning rates)
                # could drift apart. All ranks go by the slowest clock.
                clocks = torch.tensor([[spent, pace]], dtype=torch.float64, device=accelerator.device)
                spent, pace = (float(x) for x in accelerator.gather(clocks).max(dim=0).values)
            if tc.time_budget_s is not None and ckpt is None and step - start_step >= CALIBRATION_STEPS:
                left = tc.time_budget_s - spent
                horizon["steps"] = max(step + 1, min(tc.steps, step + int(left / pace)))
                progress.update(task, total=horizon["steps"])
            tps = (tokens_seen - tokens_before) / max(train_s, 1e-9)
            lr = scheduler.get_last_lr()[0]
            _log(
                metrics_path,
                {
                    "kind": "train",
                    "step": step,
                    "loss": last_loss,
                    "lr": lr,
                    "tokens_seen": tokens_seen,
                    "tokens_per_s": tps,
                    "elapsed_s": elapsed,
                    "train_s": train_s,
                },
                accelerator,
            )
            progress.update(task, completed=step, loss=last_loss, lr=lr, tps=tps)
            out_of_time = tc.time_budget_s is not None and (spent + pace > tc.time_budget_s or step >= horizon["steps"])
            interrupted = stop_after is not None and step - start_step >= stop_after
            signalled = stop.get("signal")
            if world > 1:  # a signal may reach one rank only: all stop together
                flag = torch.tensor([1.0 if signalled else 0.0], device=accelerator.device)
                signalled = signalled or (bool(accelerator.reduce(flag, "sum").item()) and "SIGTERM")
            interrupted = interrupted or bool(signalled)
            last_step = step == tc.steps or out_of_time
            if step % tc.eval_every == 0 or (last_step and final_eval):
                evaluate(step)
            if step % tc.sample_every == 0:
                if accelerator.is_main_process:
                    write_samples(step)
                # The other ranks wait here, not inside their next step, so rank 0's samples do not count as
                # their training time.
                accelerator.wait_for_everyone()
            if step % tc.checkpoint_every == 0 or out_of_time or interrupted or step == tc.steps:
                _save_checkpoint(
                    accelerator,
                    run_dir,
                    step,
                    tc.keep_checkpoints,
                    {"step": step, "tokens_seen": tokens_seen, "loss": last_loss, "horizon": horizon["steps"]},
                )
            if signalled:
                ckpt_path = latest_checkpoint(run_dir)
                raise TrainingInterrupted(
                    f"{signalled} at step {step}: checkpoint saved to {ckpt_path}; continue with the same command "
                    "plus --resume"
                )
            if interrupted:
                return TrainResult(run_dir, step, True, elapsed, tokens_seen, tps, last_loss, evals)
            if out_of_time:
                stopped_early = True
                break

    elapsed = time.perf_counter() - t0
    output_dir = _save_outputs(accelerator, model, tokenizer, run_dir, merge=tc.merge)
    if accelerator.is_main_process:
        plot_loss(metrics_path, run_dir / "loss.png")
    tps = (tokens_seen - tokens_before) / max(sum(step_times), 1e-9)
    result = TrainResult(run_dir, step, stopped_early, elapsed, tokens_seen, tps, last_loss, evals, output_dir)
    if accelerator.is_main_process:
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in result.__dict__.items()}
        write_json(run_dir / "train_summary.json", summary)
    return result


def _adamw(groups: list[dict[str, Any]], lr: float, device_type: str):
    """AdamW with the fused kernel where the training device has one for these parameters, else the default
    (foreach) kernel. ``device_type`` is where the parameters will live once accelerate has placed them."""
    import torch

    params = [p for g in groups for p in g["params"]]
    fused = device_type in FUSED_ADAMW_DEVICES and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


def _fused_loss_model(accelerator, model, tc):
    """The unwrapped model whose head and loss ``causal_lm_loss`` fuses, or None for the model's own loss."""
    wanted = tc.fused_loss if tc.fused_loss is not None else accelerator.device.type == "cpu"
    if not wanted or tc.compile or tc.method == "scratch":  # compiled graphs and our GPT keep their own loss
        return None
    inner = _unwrap(accelerator, model)
    return inner if can_fuse(inner) else None


def _unwrap(accelerator, model):
    return accelerator.unwrap_model(model, keep_torch_compile=False)


@contextmanager
def _without_autocast(model):
    """``model`` with the forward it had before accelerate wrapped it in autocast (mixed precision), for as
    long as the block runs: validation scores the weights as saved, in their own precision, so the perplexity
    logged while training is the one ``shelley eval`` gives the saved model, whatever precision trained it.
    accelerate keeps that forward as ``_original_forward``; ``unwrap_model(keep_fp32_wrapper=False)`` would
    restore it for good and end the mixed precision of the steps still to come."""
    original = model.__dict__.get("_original_forward")
    wrapped = model.__dict__.get("forward")
    if original is None or wrapped is None:  # not mixed precision: nothing was wrapped
        yield model
        return
    model.forward = original
    try:
        yield model
    finally:
        model.forward = wrapped


def _inference_model(accelerator, model, tokenizer):
    """A model Hugging Face ``generate`` can drive: the scratch GPT is exported to GPT-2 first (cheap: a copy
    of a few million weights), everything else is used as is."""
    from shelley.gpt.model import GPT

    unwrapped = _unwrap(accelerator, model)
    if isinstance(unwrapped, GPT):
        from shelley.gpt.setup import export_hf

        return export_hf(unwrapped, tokenizer).to(accelerator.device)
    return unwrapped


def _save_outputs(accelerator, model, tokenizer, run_dir: Path, *, merge: bool) -> Path:
    accelerator.wait_for_everyone()
    unwrapped = _inference_model(accelerator, model, tokenizer)
    is_peft = hasattr(unwrapped, "peft_config")
    out = run_dir / ("adapter" if is_peft else "model")
    if accelerator.is_main_process:
        from shelley.io import atomic_dir

        with atomic_dir(out, overwrite=True) as tmp:
            unwrapped.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        if is_peft and merge:
            merged = unwrapped.merge_and_unload() if not getattr(unwrapped, "is_loaded_in_4bit", False) else None
            if merged is not None:
                with atomic_dir(run_dir / "model", overwrite=True) as tmp:
                    merged.save_pretrained(tmp, safe_serialization=True)
                    tokenizer.save_pretrained(tmp)
    accelerator.wait_for_everyone()
    return out


@contextmanager
def _removed_on_error(run_dir: Path, *, enabled: bool):
    try:
        yield
    except (ShelleyError, OSError):
        if enabled:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


@contextmanager
def _stop_on_signals():
    """Turn Ctrl-C (SIGINT) and SIGTERM into a flag the loop checks after each step, so the step in flight
    finishes and a checkpoint is written before exiting. A second Ctrl-C stops at once."""
    import signal
    import threading

    stop: dict[str, str | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be installed from the main thread
        return

    def handler(signum, _frame):
        if stop["signal"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop["signal"] = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeError the CPU allocator raises when RAM runs out."""
    text = str(exc)
    return type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)
    )


@contextmanager
def _oom_guard(cfg: ShelleyConfig, step: int, run_dir: Path):
    """Turn an out-of-memory error into advice; the checkpoints already written stay untouched."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not (isinstance(exc, MemoryError) or is_oom(exc)):
            raise
        tc = cfg.train
        smaller = max(1, tc.micro_batch_size // 2)
        last = latest_checkpoint(run_dir)
        raise ShelleyError(
            f"out of memory at step {step} with train.micro_batch_size={tc.micro_batch_size} and "
            f"model.max_length={cfg.model.max_length}; try --set train.micro_batch_size={smaller} "
            f"--set train.grad_accum={tc.grad_accum * tc.micro_batch_size // smaller} (same effective batch), a "
            f"smaller model.max_length, or train.gradient_checkpointing=true. Last checkpoint: {last or 'none'}"
        ) from None


def _write_corpus(run_dir: Path, train_texts: list[str], val_texts: list[str]) -> None:
    """Keep the texts the run saw: the originality guard indexes them, and a hash ties the index to them."""
    from shelley.eval.originality import corpus_rows_from_texts
    from shelley.io import atomic_write_text

    rows = corpus_rows_from_texts({"train": train_texts, "validation": val_texts})
    atomic_write_text(run_dir / "corpus.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to ``step``: a run killed after its last checkpoint logged steps that resume redoes."""
    if not path.exists():
        return
    from shelley.io import atomic_write_text

    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))


def _log(path: Path, row: dict[str, Any], accelerator) -> None:
    if accelerator.is_main_process:
        row = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()}
        with path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f} · lr {task.fields[lr]:.2e} · {task.fields[tps]:.0f} tok/s"),
        TimeRemainingColumn(),
        disable=not enabled,
    )
