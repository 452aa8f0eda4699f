"""The one training loop, on accelerate: full, LoRA, QLoRA and the scratch GPT all run through ``train``.

``train`` is a short list of stages: ``_check_run_dir``, ``_setup_accelerator``, ``_setup_model``,
``_setup_data``, ``_setup_optimizer``, ``checkpoint.load_checkpoint``, then ``fit``, whose steps are
``_optimizer_step`` (forward, the NaN policy, backward, clipping), the cross-rank agreements (``_agree_*``),
``BudgetSchedule`` (the learning rate fitted to a time budget) and ``_after_step`` (``validate``, samples,
checkpoints), and ``_finish`` (outputs, loss plot, summary). The stages share one ``TrainState`` (``state``);
checkpoints, resume and the best weights are ``checkpoint``'s. The loop imports no evaluation or generation
code: samples come from the ``sampler`` its caller passes in.

``accelerate launch -m shelley.cli train ...`` scales it to several GPUs or machines unchanged: every
process draws its own micro-batches from the same deterministic order (see ``packing.micro_batch_indices``).

Where each file goes is ``shelley.run.Run``'s business: the loop asks it for paths.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from shelley.config import ShelleyConfig
from shelley.corpus import Corpus
from shelley.errors import ShelleyError, TrainingInterrupted
from shelley.finetune.checkpoint import (
    check_resume,
    load_checkpoint,
    restore_best,
    save_best,
    save_checkpoint,
)
from shelley.finetune.loss import can_fuse, causal_lm_loss
from shelley.finetune.methods import set_attention, training_attention
from shelley.finetune.packing import PackedBlocks, encode_stream, micro_batch_indices
from shelley.finetune.state import BudgetSchedule, TrainState, unwrap
from shelley.io import atomic_dir, atomic_write_text, check_output_dir, write_json
from shelley.models.bos import bos_prefix
from shelley.records import TrainResult
from shelley.run import Run
from shelley.runtime import resolve_precision, tune_allocator

CALIBRATION_STEPS = 3  # steps timed before the cosine horizon is first fitted to a time budget
FUSED_ADAMW_DEVICES = ("cpu", "cuda", "mps")  # torch has a fused AdamW kernel there


def _autocast(device_type: str, precision: str):
    """The precision context of the training forward (nanoGPT's ``ctx``): autocast to bf16/fp16, or nothing.

    shelley owns it rather than asking accelerate for mixed precision: accelerate would wrap the model's
    forward in autocast for good, so validation would need the wrapper lifted, and a second ``Accelerator``
    with another precision in one process would need its process-wide state reset."""
    import contextlib

    import torch

    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type, dtype=low) if low is not None else contextlib.nullcontext()


def plot_loss(metrics_path: Path, out: Path, kept_step: int | None = None) -> None:
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
    kept = [loss for st, loss in val if st == kept_step]
    if kept:
        ax.axvline(kept_step, color="#2e7d32", linestyle="--", linewidth=1)
        ax.plot([kept_step], kept[:1], "*", markersize=14, color="#2e7d32", label=f"kept (step {kept_step})")
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
    run_dir: Path | Run,
    *,
    resume: bool = False,
    overwrite: bool = False,
    model=None,
    tokenizer=None,
    show_progress: bool = True,
    stop_after: int | None = None,
    final_eval: bool = True,
    sampler: Callable[..., list[str]] | None = None,
) -> TrainResult:
    """Train per ``cfg`` and save outputs in ``run_dir``.

    ``model``/``tokenizer`` may be passed in (tests build tiny random models); otherwise they are loaded from
    ``cfg.model``. ``stop_after`` ends the process's work after that many steps as if it were interrupted
    (checkpoint written, no final outputs), which is how tests exercise resume. ``final_eval=False`` skips the
    validation pass at the end (``shelley run`` scores the model itself right after). ``sampler(model,
    tokenizer, prompts, generation_config)`` writes the samples of ``samples.jsonl`` every
    ``train.sample_every`` steps (the CLI passes ``shelley.generate.generate_texts``; None: no samples), so the
    loop depends on no generation code.

    With ``train.time_budget_s`` the loop never starts a step it cannot finish in the budget, and the cosine
    horizon follows the measured step time (``BudgetSchedule``), so the learning rate reaches the end of its
    decay when the budget runs out, not before and not after.
    """
    from accelerate.utils import set_seed

    tune_allocator()
    files = run_dir if isinstance(run_dir, Run) else Run.for_training(run_dir)
    ckpt = _check_run_dir(cfg, files, resume=resume, overwrite=overwrite, tokenizer_given=tokenizer is not None)
    accelerator = _setup_accelerator(cfg.train)
    set_seed(cfg.train.seed)
    # A set-up error (bad tokenizer, corpus smaller than one block, ...) leaves no half-made run dir behind.
    with _removed_on_error(files.train_dir, enabled=not resume and accelerator.is_main_process):
        if accelerator.is_main_process:
            _write_run_files(cfg, files, train_texts, val_texts, resume=resume)
        model, tokenizer, own_attention = _setup_model(cfg, accelerator, files, train_texts, model, tokenizer)
        blocks, val_stream = _setup_data(cfg, accelerator, tokenizer, files, train_texts, val_texts)
    state = TrainState(
        cfg, files, accelerator, model, tokenizer, blocks, val_stream, val_texts, sampler=sampler,
        own_attention=own_attention,
    )  # fmt: skip
    _setup_optimizer(state)
    try:
        if ckpt is not None:
            load_checkpoint(state, ckpt)
        return fit(state, show_progress=show_progress, stop_after=stop_after, final_eval=final_eval)
    finally:  # however training ends (interrupted, an error), the caller's model has its own kernel back
        set_attention(unwrap(accelerator, state.model), own_attention)


def _check_run_dir(cfg: ShelleyConfig, files: Run, *, resume: bool, overwrite: bool, tokenizer_given: bool):
    """Fail before anything is written: a bad scratch config, an unwritable or existing run dir. Returns the
    checkpoint to resume from (None for a fresh run)."""

    if cfg.train.method == "scratch":
        from shelley.gpt.setup import check_scratch_config

        check_scratch_config(cfg, tokenizer_given=tokenizer_given)
    run_dir = files.train_dir
    check_output_dir(run_dir, overwrite=True, flag="--run-dir")  # writable? (existing runs are handled below)
    if resume:
        return check_resume(files, cfg)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ShelleyError(f"run dir {run_dir} already exists; pass --overwrite, --resume, or another run dir")
        shutil.rmtree(run_dir)
    return None


def _setup_accelerator(tc):
    import torch
    from accelerate import Accelerator

    # mixed_precision="no": the precision is ours (``_autocast`` around the training forward, our GradScaler).
    return Accelerator(
        gradient_accumulation_steps=tc.grad_accum, mixed_precision="no", cpu=not torch.cuda.is_available()
    )


def _write_run_files(cfg: ShelleyConfig, files: Run, train_texts: list[str], val_texts: list[str], *, resume: bool):
    files.train_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        files.config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        _write_corpus(files, train_texts, val_texts)


def _setup_model(cfg: ShelleyConfig, accelerator, files: Run, train_texts: list[str], model, tokenizer):
    """The model and tokenizer of the method: passed in, loaded from model.name, or a new scratch GPT."""
    import torch

    from shelley.finetune.methods import load_base_model, load_tokenizer_for_training, prepare_for_method

    own_attention = None  # the attention kernel the model had, when training switched it (training_attention)
    if cfg.train.method == "scratch":
        from shelley.gpt.setup import scratch_model, scratch_tokenizer

        main = accelerator.is_main_process
        tokenizer = tokenizer or scratch_tokenizer(cfg, train_texts, files.tokenizer_dir, main_process=main)
        model = model if model is not None else scratch_model(cfg, tokenizer)
    else:
        tokenizer = tokenizer or load_tokenizer_for_training(cfg)
        model = model if model is not None else load_base_model(cfg)
        own_attention = set_attention(model, training_attention(cfg, accelerator.device.type))
        model = prepare_for_method(model, cfg)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.train.compile:
        # Compiled before accelerate wraps it; unwrap_model(keep_torch_compile=False) gives the plain module back.
        model = torch.compile(model)
    return model, tokenizer, own_attention


def _setup_data(cfg: ShelleyConfig, accelerator, tokenizer, files: Run, train_texts, val_texts):
    """Tokenize and pack once: rank 0 writes the memmap cache, the other ranks wait, then read it."""
    block = cfg.model.max_length
    cache = files.cache_dir
    with accelerator.main_process_first():
        blocks = PackedBlocks(encode_stream(train_texts, tokenizer, cache, "train"), block, bos_prefix(tokenizer))
        val_stream = encode_stream(val_texts, tokenizer, cache, "validation")
    if len(blocks) == 0:
        raise ShelleyError(
            f"the training text has {len(blocks.stream)} tokens, fewer than one block of "
            f"model.max_length={block}; lower model.max_length or use a bigger corpus"
        )
    return blocks, val_stream


def _setup_optimizer(state: TrainState) -> None:
    """AdamW (8-bit paged for QLoRA), the budget-fitted schedule, accelerate's wrapping, the fused loss head."""
    import torch

    tc, accelerator = state.tc, state.accelerator
    state.params = [p for p in state.model.parameters() if p.requires_grad]
    # Weight decay on matrices only: decaying biases and LayerNorm gains only pulls them off their useful values.
    groups = [
        {"params": [p for p in state.params if p.dim() >= 2], "weight_decay": tc.weight_decay},
        {"params": [p for p in state.params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if tc.method == "qlora" and accelerator.device.type == "cuda":
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(groups, lr=tc.learning_rate)  # paged: CUDA unified memory
    else:
        # The fused kernel updates every tensor in one pass instead of a chain of foreach ops: on 2 CPU cores
        # a SmolLM2-135M full step's optimizer time drops from ~0.35 s to ~0.15 s. Same math (torch tests it
        # against the reference implementation); the Trainer uses it by default too.
        optimizer = _adamw(groups, tc.learning_rate, accelerator.device.type)
    state.schedule = BudgetSchedule(tc, state.max_steps)
    state.model, state.optimizer = accelerator.prepare(state.model, optimizer)
    state.loss_head = _fused_loss_model(accelerator, state.model, tc)
    # The scheduler stays ours (registered so checkpoints carry it): accelerate's wrapper would step it once per
    # process, so N processes would run the schedule N times faster than one process with the same global batch.
    schedule = state.schedule  # a plain function, so the scheduler's state_dict stays as it was (no lambda state)
    state.scheduler = torch.optim.lr_scheduler.LambdaLR(state.optimizer.optimizer, lambda s: schedule.lr_lambda(s))
    accelerator.register_for_checkpointing(state.scheduler)
    state.precision = resolve_precision(tc.precision)
    # fp16 gradients underflow without loss scaling; bf16 keeps fp32's exponent range and needs none.
    state.scaler = torch.amp.GradScaler(accelerator.device.type, enabled=state.precision == "fp16")
    if state.scaler.is_enabled():
        accelerator.register_for_checkpointing(state.scaler)


def fit(state: TrainState, *, show_progress: bool = True, stop_after: int | None = None, final_eval: bool = True):
    """The training loop: optimizer steps until train.steps (or train.max_epochs), the time budget, early
    stopping, ``stop_after`` or a signal; validation, samples and checkpoints on their schedules; the outputs."""
    tc, accelerator, schedule = state.tc, state.accelerator, state.schedule
    step, tokens_seen, skipped = state.start_step, state.tokens_before, 0
    last_loss, tps, reason = float("nan"), 0.0, "steps" if state.max_steps == tc.steps else "max epochs"
    state.t0 = time.perf_counter()
    progress = _progress(show_progress and accelerator.is_main_process)
    task = progress.add_task("training", total=state.max_steps, completed=step, loss=float("nan"), lr=0.0, tps=0.0)
    state.model.train()
    with progress, _stop_on_signals() as stop:
        while step < state.max_steps:
            step_start = time.perf_counter()
            losses, bad, tokens = _optimizer_step(state, step, skipped)
            step, tokens_seen = step + 1, tokens_seen + tokens
            if bad:
                skipped += 1
                _log(state.metrics_path, {"kind": "skip", "step": step, "reason": "non-finite loss"}, accelerator)
            last_loss = _mean_loss(state, losses)
            elapsed = time.perf_counter() - state.t0
            # Throughput counts optimizer-step time only: evals, samples and checkpoints are not training.
            schedule.record(time.perf_counter() - step_start)
            spent, pace, slowest = _agree_clocks(state, schedule.spent(elapsed), schedule.pace, schedule.slowest)
            if state.ckpt is None and step - state.start_step >= CALIBRATION_STEPS and tc.time_budget_s is not None:
                schedule.refit(step, spent, pace)
                progress.update(task, total=schedule.horizon)
            tps = (tokens_seen - state.tokens_before) / max(schedule.train_s, 1e-9)
            lr = state.scheduler.get_last_lr()[0]
            row = {"kind": "train", "step": step, "loss": last_loss, "lr": lr, "tokens_seen": tokens_seen}
            row |= {"epoch": round(step / state.steps_per_epoch, 4), "tokens_per_s": tps}
            _log(state.metrics_path, row | {"elapsed_s": elapsed, "train_s": schedule.train_s}, accelerator)
            progress.update(task, completed=step, loss=last_loss, lr=lr, tps=tps)
            out_of_time = schedule.out_of_time(step, spent, slowest)
            signalled = _agree_signal(state, stop.get("signal"))
            interrupted = (stop_after is not None and step - state.start_step >= stop_after) or bool(signalled)
            counters = {"step": step, "tokens_seen": tokens_seen, "loss": last_loss, "horizon": schedule.horizon}
            # At a normal end the outputs are saved: a last checkpoint is only for runs that keep them.
            ending = (out_of_time or step == state.max_steps) and not tc.drop_checkpoints
            last = step == state.max_steps or out_of_time
            early = _after_step(state, step, counters, last=last, final_eval=final_eval, save=ending or interrupted,
                                clock=spent)  # fmt: skip
            if signalled:
                raise TrainingInterrupted(
                    f"{signalled} at step {step}: checkpoint saved to {state.files.latest_checkpoint()}; continue "
                    "with the same command plus --resume"
                )
            if interrupted:
                return TrainResult(
                    run_dir=state.files.train_dir, steps=step, stopped_early=True, train_seconds=elapsed,
                    tokens_seen=tokens_seen, tokens_per_second=tps, last_loss=last_loss, evals=state.evals,
                    stop_reason="interrupted",
                )  # fmt: skip
            if out_of_time or early:
                reason = "early stopping" if early else "time budget"
                break
    return _finish(state, step, reason, tokens_seen, last_loss)


def _optimizer_step(state: TrainState, step: int, skipped: int) -> tuple[list[float], bool, int]:
    """One optimizer step over train.grad_accum micro-batches: forward, the NaN policy, backward, clipping, the
    optimizer and scheduler steps. Returns (micro-batch losses, whether the update was skipped, tokens seen)."""
    tc, accelerator = state.tc, state.accelerator
    losses, bad, tokens = [], False, 0  # bad: a non-finite loss in this optimizer step (nan_policy skip)
    for k in range(tc.grad_accum):
        micro = (step * tc.grad_accum + k) * state.world + accelerator.process_index
        ids = state.blocks.batch(micro_batch_indices(len(state.blocks), tc.micro_batch_size, tc.seed, micro))
        ids = ids.to(accelerator.device)
        with accelerator.accumulate(state.model), _oom_guard(state.cfg, step + 1, state.files):
            with _autocast(accelerator.device.type, state.precision):  # the forward and the fused head
                loss = causal_lm_loss(state.model, ids, inner=state.loss_head)
            if _agree_finite(state, loss):
                accelerator.backward(state.scaler.scale(loss))  # (scale: identity unless fp16)
            else:
                _nan_policy(state, loss, step, skipped)
                bad = True
            if accelerator.sync_gradients and not bad:
                state.scaler.unscale_(state.optimizer)  # clip the true gradients, not the scaled ones
                accelerator.clip_grad_norm_(state.params, tc.max_grad_norm)
                state.scaler.step(state.optimizer)  # optimizer.step(), skipped by fp16 scaling on inf gradients
                state.scaler.update()
            if accelerator.sync_gradients:
                state.scheduler.step()  # once per optimizer step, skipped or not: the schedule counts steps
            state.optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        tokens += ids.numel() * state.world
    return losses, bad, tokens


def _nan_policy(state: TrainState, loss, step: int, skipped: int) -> None:
    """A non-finite loss stops the run (naming the last good checkpoint) unless train.nan_policy is skip and
    fewer than train.max_skipped_steps were skipped."""
    tc = state.tc
    if tc.nan_policy == "stop" or skipped >= tc.max_skipped_steps:
        last = state.files.latest_checkpoint()
        raise ShelleyError(
            f"loss became {float(loss.detach())} at step {step + 1}; training stopped"
            + (f" after skipping {skipped} steps" if skipped else "")
            + f". Last good checkpoint: {last or 'none'}. Lower train.learning_rate, use "
            "precision fp32, or set train.nan_policy=skip"
        )


# Cross-rank agreement: every rank must take the same decision at the same step, or one would wait forever in
# a collective (backward's all-reduce, the next step) that the others never reach.


def _agree_finite(state: TrainState, loss) -> bool:
    import torch

    finite = torch.isfinite(loss.detach()).float().reshape(1)
    if state.world > 1:
        finite = state.accelerator.gather(finite).min().reshape(1)
    return bool(finite.item())


def _mean_loss(state: TrainState, losses: list[float]) -> float:
    """The step's mean micro-batch loss; over ranks, the loss of the global batch as one process would see it."""
    import torch

    finite = [x for x in losses if math.isfinite(x)] or [float("nan")]
    loss = sum(finite) / len(finite)
    if state.world > 1:
        loss = float(state.accelerator.reduce(torch.tensor([loss], device=state.accelerator.device), "mean"))
    return loss


def _agree_clocks(state: TrainState, *clocks: float) -> tuple[float, ...]:
    """Under a time budget all ranks go by the slowest rank's clocks (time spent, step pace, slowest step):
    each times itself, so near the end one could stop while another starts a step, and their cosine horizons
    (so learning rates) could drift apart."""
    import torch

    if state.world == 1 or state.tc.time_budget_s is None:
        return clocks
    mine = torch.tensor([clocks], dtype=torch.float64, device=state.accelerator.device)
    return tuple(float(x) for x in state.accelerator.gather(mine).max(dim=0).values)


def _agree_signal(state: TrainState, signalled: str | None) -> str | None:
    """A signal may reach one rank only: all stop together."""
    return signalled or (_agree_any(state, bool(signalled)) and "SIGTERM") or None


def _agree_any(state: TrainState, flag: bool) -> bool:
    """True on every rank when it is true on any."""
    import torch

    if state.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=state.accelerator.device)
    return bool(state.accelerator.reduce(t, "sum").item())


def _after_step(
    state: TrainState, step: int, counters: dict[str, Any], *, last: bool, final_eval: bool, save: bool, clock: float
) -> bool:
    """Validation (with best-model tracking), samples and a checkpoint, each on its own schedule (and at the
    end). Returns True when train.patience evaluations in a row brought no improvement: time to stop."""
    tc, accelerator = state.tc, state.accelerator
    early = False
    if step % tc.eval_every == 0 or (last and final_eval):
        early = _track_best(state, step, validate(state, step))
    if step % tc.sample_every == 0:
        if accelerator.is_main_process:
            _write_samples(state, step)
        # The other ranks wait here, not inside their next step, so rank 0's samples do not count as their
        # training time.
        accelerator.wait_for_everyone()
    stopping_early = early and not tc.drop_checkpoints
    if step % tc.checkpoint_every == 0 or save or stopping_early or _checkpoint_due(state, clock):
        save_checkpoint(accelerator, state.files, step, tc.keep_checkpoints, counters | {"best": state.best})
        state.checkpointed_at = clock
    return early


def _checkpoint_due(state: TrainState, clock: float) -> bool:
    """train.checkpoint_every_s has passed on the budget clock since the last checkpoint, and the budget does not
    end within one more interval (then the outputs are about to be saved; a checkpoint would cost as much disk
    as the model and its optimizer state). Every rank takes the same decision."""
    every, budget = state.tc.checkpoint_every_s, state.tc.time_budget_s
    if every is None:
        return False  # (the same on every rank: no need to ask them)
    return _agree_any(state, clock - state.checkpointed_at >= every and (budget is None or budget - clock > every))


def _track_best(state: TrainState, step: int, row: dict[str, Any]) -> bool:
    """Remember the best validation loss (and with train.keep_best its weights, in the run's best/); count the
    evaluations since. True when train.patience of them brought no improvement of train.min_delta."""
    best, tc = state.best, state.tc
    if best["val_loss"] is None or row["val_loss"] < best["val_loss"] - tc.min_delta:
        best.update(step=step, val_loss=row["val_loss"], stale_evals=0)
        if tc.keep_best:
            save_best(state)
        return False
    best["stale_evals"] += 1
    return tc.patience is not None and best["stale_evals"] >= tc.patience


def validate(state: TrainState, step: int) -> dict[str, Any]:
    """Perplexity of the model as it is now on the validation tokens, logged to metrics.jsonl."""
    from shelley.models.perplexity import perplexity

    # No autocast here: the training forward's is a context around the steps, not a wrapper on the model, so
    # validation scores the weights as saved, in their own precision (and with their own attention kernel).
    with _own_attention(state):
        res = perplexity(
            unwrap(state.accelerator, state.model),
            state.val_stream,
            max_length=state.cfg.model.max_length,
            stride=state.cfg.eval.stride,
            batch_size=state.tc.micro_batch_size,
            max_tokens=state.cfg.eval.max_eval_tokens,
            prefix=state.blocks.prefix,
        )
    row = {"kind": "eval", "step": step, "val_loss": res["nll"], "val_perplexity": res["perplexity"]}
    row["val_tokens"] = res["tokens"]
    state.evals.append(row)
    _log(state.metrics_path, row, state.accelerator)
    return row


def _write_samples(state: TrainState, step: int) -> None:
    from shelley.data.books import corpus_prompts

    if state.sampler is None:
        return
    gen = state.cfg.generation.model_copy(
        # At most half the context, so the prompts keep room (a tiny scratch model may see 64 tokens).
        update={
            "max_new_tokens": min(60, state.cfg.generation.max_new_tokens, max(1, state.cfg.model.max_length // 2)),
            "num_samples": 1,
        }
    )
    prompts = state.cfg.eval.prompts or corpus_prompts(state.val_texts)
    with _own_attention(state):
        model = _inference_model(state.accelerator, state.model, state.tokenizer)
        texts = state.sampler(model, state.tokenizer, prompts, gen)
    with state.files.samples_file.open("a") as fh:
        for p, t in zip(prompts, texts, strict=True):
            fh.write(json.dumps({"step": step, "prompt": p, "text": t}) + "\n")


@contextmanager
def _own_attention(state: TrainState):
    """The model with the attention kernel it came with (``training_attention`` may have switched it for the
    steps): validation and samples see the model as it will be saved and loaded."""
    model = unwrap(state.accelerator, state.model)
    set_attention(model, state.own_attention)
    try:
        yield
    finally:
        if state.own_attention is not None:  # it was switched for training: switch it back
            set_attention(model, training_attention(state.cfg, state.accelerator.device.type))


def _finish(state: TrainState, step: int, reason: str, tokens_seen: int, last_loss: float) -> TrainResult:
    """Keep the best weights when the last ones validated worse, then save the model or adapter, the loss plot
    (the kept step marked) and train_summary.json. Last weights that were never validated (``shelley run``
    scores them itself) are kept: nothing says they are worse."""

    elapsed = time.perf_counter() - state.t0
    best, tc = state.best, state.tc
    last_validated = bool(state.evals) and state.evals[-1]["step"] == step
    kept = step
    if tc.keep_best and best["step"] is not None and best["step"] != step and last_validated:
        restore_best(state)
        kept = best["step"]
    # Saved with the attention kernel it came with (train() hands it back so on every other exit too).
    set_attention(unwrap(state.accelerator, state.model), state.own_attention)
    output_dir = _save_outputs(state.accelerator, state.model, state.tokenizer, state.files, merge=tc.merge)
    if state.accelerator.is_main_process:
        plot_loss(state.metrics_path, state.files.loss_plot, kept_step=kept)
        if tc.drop_checkpoints:  # the outputs are on disk: the optimizer state has done its job
            shutil.rmtree(state.files.checkpoints_dir, ignore_errors=True)
            shutil.rmtree(state.files.best_dir, ignore_errors=True)
    tps = (tokens_seen - state.tokens_before) / max(state.schedule.train_s, 1e-9)
    left = None
    if tc.time_budget_s is not None and reason in ("early stopping", "max epochs"):
        left = round(max(0.0, tc.time_budget_s - state.schedule.spent(elapsed)), 1)
    result = TrainResult(
        run_dir=state.files.train_dir, steps=step, stopped_early=reason != "steps", train_seconds=elapsed,
        tokens_seen=tokens_seen, tokens_per_second=tps, last_loss=last_loss, evals=state.evals, output_dir=output_dir,
        stop_reason=reason, kept_step=kept, epochs=round(step / state.steps_per_epoch, 3), best_step=best["step"],
        best_val_loss=best["val_loss"], budget_left_s=left,
    )  # fmt: skip
    if state.accelerator.is_main_process:
        write_json(state.files.summary_file, result.summary())
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
    inner = unwrap(accelerator, model)
    return inner if can_fuse(inner) else None


def _inference_model(accelerator, model, tokenizer):
    """A model Hugging Face ``generate`` can drive: the scratch GPT is exported to GPT-2 first (cheap: a copy
    of a few million weights), everything else is used as is."""
    from shelley.gpt.model import GPT

    unwrapped = unwrap(accelerator, model)
    if isinstance(unwrapped, GPT):
        from shelley.gpt.setup import export_hf

        return export_hf(unwrapped, tokenizer).to(accelerator.device)
    return unwrapped


def _save_outputs(accelerator, model, tokenizer, files: Run, *, merge: bool) -> Path:
    accelerator.wait_for_everyone()
    unwrapped = _inference_model(accelerator, model, tokenizer)
    is_peft = hasattr(unwrapped, "peft_config")
    out = files.adapter_dir if is_peft else files.model_dir
    if accelerator.is_main_process:
        with atomic_dir(out, overwrite=True) as tmp:
            unwrapped.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        if is_peft and merge:
            merged = unwrapped.merge_and_unload() if not getattr(unwrapped, "is_loaded_in_4bit", False) else None
            if merged is not None:
                with atomic_dir(files.model_dir, overwrite=True) as tmp:
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
def _oom_guard(cfg: ShelleyConfig, step: int, files: Run):
    """Turn an out-of-memory error into advice; the checkpoints already written stay untouched."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not (isinstance(exc, MemoryError) or is_oom(exc)):
            raise
        tc = cfg.train
        smaller = max(1, tc.micro_batch_size // 2)
        last = files.latest_checkpoint()
        raise ShelleyError(
            f"out of memory at step {step} with train.micro_batch_size={tc.micro_batch_size} and "
            f"model.max_length={cfg.model.max_length}; try --set train.micro_batch_size={smaller} "
            f"--set train.grad_accum={tc.grad_accum * tc.micro_batch_size // smaller} (same effective batch), a "
            f"smaller model.max_length, or train.gradient_checkpointing=true. Last checkpoint: {last or 'none'}"
        ) from None


def _write_corpus(files: Run, train_texts: list[str], val_texts: list[str]) -> None:
    """Keep the texts the run saw: the originality guard indexes them, and a hash ties the index to them."""
    rows = Corpus({"train": train_texts, "validation": val_texts}).rows()
    atomic_write_text(files.corpus_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


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
