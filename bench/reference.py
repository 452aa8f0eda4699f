"""The stock recipe a user would otherwise write, kept as the reference the train bench compares against:
the plain Hugging Face ``Trainer``, each snippet truncated to ``max_length`` 128 and padded by the stock
collator to the longest snippet of its batch of 8, lr 5e-5, fp32.

It stops at a wall-clock budget (a ``TrainerCallback``) and counts real (non-pad) tokens, so its tokens/s is
comparable with shelley's packed training, where every token is real. It also counts the padded tokens it
computes on: on a CPU where its GEMMs already run near the matmul peak, padding is what it wastes, and the
real share bounds how far ahead a padding-free trainer can get. It counts the batches its steps trained
on, not the batches collated: accelerate's data loader collates one batch ahead (to know which batch is the
last), so the collator sees one batch more than the Trainer steps on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class StepBudget(TrainerCallback):
    """Stops a ``Trainer`` after ``budget_s`` seconds of optimizer steps; with ``score(model)``, scores it every
    ``eval_every`` steps outside the budget into ``timeline``. Both references (this one and TRL's) use it."""

    def __init__(self, budget_s: float, eval_every: int | None = None, score: Callable | None = None) -> None:
        self.budget_s, self.eval_every, self.score = budget_s, eval_every, score
        self.steps, self.train_s = 0, 0.0
        self.timeline: list[dict] = []

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kw):
        self.train_s += time.perf_counter() - self._t
        self.steps = state.global_step
        if self.score is not None and self.eval_every and self.steps % self.eval_every == 0:
            perplexity = self.score(model)
            self.timeline.append({"step": self.steps, "train_seconds": self.train_s, "val_perplexity": perplexity})
            model.train()
        if self.train_s >= self.budget_s:
            control.should_training_stop = True

    def stats(self, batch_tokens: list[int]) -> dict[str, Any]:
        """The run's figures from the real tokens of each collated batch, in the order the steps took them: only
        the batches the steps trained on count (one per step, no gradient accumulation)."""
        real_tokens = sum(batch_tokens[: self.steps])
        return {
            "steps": self.steps,
            "train_seconds": self.train_s,
            "real_tokens": real_tokens,
            "collated_batches": len(batch_tokens),
            "tokens_per_second": real_tokens / max(self.train_s, 1e-9),
            "timeline": self.timeline,
        }


def trainer_args(out_dir: Path, *, batch_size: int, lr: float, seed: int) -> dict[str, Any]:
    """The ``TrainingArguments`` both references share: CPU, no logging or saving, a step count the budget ends."""
    return {
        "output_dir": str(out_dir),
        "per_device_train_batch_size": batch_size,
        "learning_rate": lr,
        "max_steps": 100_000,
        "logging_strategy": "no",
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "seed": seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def train_reference(
    model,
    tokenizer,
    train_texts: list[str],
    *,
    budget_s: float,
    out_dir: Path,
    max_length: int = 128,
    batch_size: int = 8,
    lr: float = 5e-5,
    seed: int = 42,
    eval_every: int | None = None,
    score: Callable | None = None,
) -> dict:
    """Train for ``budget_s`` seconds of optimizer steps; with ``score(model)``, score every ``eval_every`` steps
    (outside the budget) into the result's ``timeline``."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ds = Dataset.from_dict({"text": train_texts}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )
    base_collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    batch_tokens: list[int] = []  # real tokens of each collated batch, in the order the steps consume them
    batch_padded: list[int] = []  # all positions of each collated batch, padding included (B x longest)

    def collator(rows):
        batch = base_collator(rows)
        batch_tokens.append(int(batch["attention_mask"].sum()))
        batch_padded.append(batch["input_ids"].numel())
        return batch

    budget = StepBudget(budget_s, eval_every, score)
    args = TrainingArguments(**trainer_args(out_dir, batch_size=batch_size, lr=lr, seed=seed))
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator, callbacks=[budget])
    trainer.train()
    stats = budget.stats(batch_tokens)
    padded_tokens = sum(batch_padded[: budget.steps])
    return stats | {
        "padded_tokens": padded_tokens,
        "padded_tokens_per_second": padded_tokens / max(budget.train_s, 1e-9),
    }
