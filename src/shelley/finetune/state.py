"""What the stages of one training run share (``TrainState``), and the learning-rate schedule fitted to a time
budget (``BudgetSchedule``): the loop's state, apart from the loop (``loop``) and its checkpoints (``checkpoint``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shelley.config import ShelleyConfig
from shelley.finetune.packing import PackedBlocks
from shelley.run import Run

PACE_WINDOW = 10  # recent optimizer steps whose mean duration predicts the next ones


class BudgetSchedule:
    """Linear warmup, then cosine decay to zero (or to train.min_lr_ratio of the peak) over a horizon that fits
    the time budget.

    The horizon is train.steps. With train.time_budget_s it is re-fitted after every step, once
    CALIBRATION_STEPS have been timed, from the recent step time and the time left, so the learning rate still
    reaches the end of its decay as the budget runs out instead of being cut off near its peak. LambdaLR reads
    the horizon at each step; checkpoints carry it, and a resumed run keeps the horizon it was saved with."""

    def __init__(self, tc, max_steps: int | None = None):
        self.tc = tc
        self.max_steps = tc.steps if max_steps is None else max_steps  # train.steps, or fewer by train.max_epochs
        self.horizon = self.max_steps
        self.step_times: list[float] = []  # optimizer-step seconds, this process's run only

    def lr_lambda(self, s: int) -> float:
        tc = self.tc
        if s < tc.warmup_steps:
            return (s + 1) / (tc.warmup_steps + 1)
        progress = min(1.0, (s - tc.warmup_steps) / max(1, self.horizon - tc.warmup_steps))
        floor = tc.min_lr_ratio
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def record(self, seconds: float) -> None:
        self.step_times.append(seconds)

    @property
    def pace(self) -> float:
        recent = self.step_times[-PACE_WINDOW:]
        return sum(recent) / len(recent)

    @property
    def slowest(self) -> float:
        """The slowest recent step: what the next one may take, for the decision to start it."""
        return max(self.step_times[-PACE_WINDOW:])

    @property
    def train_s(self) -> float:
        return sum(self.step_times)  # optimizer-step time only (no evals, samples, checkpoints)

    def spent(self, elapsed: float) -> float:
        """What time_budget_s counts: all wall time, or optimizer-step time only (train.budget_clock)."""
        return elapsed if self.tc.budget_clock == "wall" else self.train_s

    def refit(self, step: int, spent: float, pace: float) -> None:
        if self.tc.time_budget_s is not None:
            left = self.tc.time_budget_s - spent
            # at least one more step while any remain; never past train.steps / train.max_epochs
            self.horizon = min(self.max_steps, max(step + 1, step + int(left / pace)))

    def out_of_time(self, step: int, spent: float, slowest: float) -> bool:
        """True when the next step, if it is as slow as the slowest recent one, would not finish inside the
        budget (a step merely as slow as the average could still overrun it), or the time-fitted horizon is
        reached before the step limit (at the step limit the loop ends anyway, for that reason)."""
        budget = self.tc.time_budget_s
        return budget is not None and (spent + slowest > budget or self.max_steps > step >= self.horizon)


@dataclass
class TrainState:
    """What the stages of one training run share; built by ``loop.train``'s setup stages, driven by ``loop.fit``."""

    cfg: ShelleyConfig
    files: Run
    accelerator: Any
    model: Any
    tokenizer: Any
    blocks: PackedBlocks
    val_stream: Any
    val_texts: list[str]
    params: list[Any] = field(default_factory=list)
    optimizer: Any = None
    scheduler: Any = None
    schedule: BudgetSchedule | None = None
    loss_head: Any = None
    precision: str = "fp32"  # bf16, fp16 or fp32: the autocast of the training forward
    own_attention: str | None = None  # the model's attention kernel, put back at the end (None: never switched)
    scaler: Any = None  # torch.amp.GradScaler, enabled for fp16 only
    ckpt: Path | None = None
    start_step: int = 0
    tokens_before: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)
    sampler: Callable[..., list[str]] | None = None
    t0: float = 0.0
    checkpointed_at: float = 0.0  # the budget clock (seconds) at the last checkpoint
    # The best validation loss seen (None before the first), its step, and evaluations since it without a better one.
    best: dict[str, Any] = field(default_factory=lambda: {"step": None, "val_loss": None, "stale_evals": 0})

    @property
    def tc(self):
        return self.cfg.train

    @property
    def metrics_path(self) -> Path:
        return self.files.metrics_file

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def steps_per_epoch(self) -> float:
        """Optimizer steps in one pass over the packed training blocks (all processes together)."""
        return len(self.blocks) / (self.tc.micro_batch_size * self.tc.grad_accum * self.world)

    @property
    def max_steps(self) -> int:
        """train.steps, or fewer when train.max_epochs passes come first."""
        if self.tc.max_epochs is None:
            return self.tc.steps
        return max(1, min(self.tc.steps, math.ceil(self.tc.max_epochs * self.steps_per_epoch)))


def unwrap(accelerator, model):
    return accelerator.unwrap_model(model, keep_torch_compile=False)
