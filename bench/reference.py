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
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ds = Dataset.from_dict({"text": train_texts}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )
    base_collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    seen = {"steps": 0, "train_s": 0.0}
    timeline: list[dict] = []
    batch_tokens: list[int] = []  # real tokens of each collated batch, in the order the steps consume them
    batch_padded: list[int] = []  # all positions of each collated batch, padding included (B x longest)

    def collator(rows):
        batch = base_collator(rows)
        batch_tokens.append(int(batch["attention_mask"].sum()))
        batch_padded.append(batch["input_ids"].numel())
        return batch

    class Budget(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kw):
            seen["train_s"] += time.perf_counter() - self.t
            seen["steps"] = state.global_step
            if score is not None and eval_every and state.global_step % eval_every == 0:
                timeline.append(
                    {"step": state.global_step, "train_seconds": seen["train_s"], "val_perplexity": score(model)}
                )
                model.train()
            if seen["train_s"] >= budget_s:
                control.should_training_stop = True

    args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        max_steps=100_000,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator, callbacks=[Budget()])
    trainer.train()
    real_tokens = sum(batch_tokens[: seen["steps"]])  # one batch per step (no gradient accumulation)
    padded_tokens = sum(batch_padded[: seen["steps"]])
    return {
        "steps": seen["steps"],
        "train_seconds": seen["train_s"],
        "real_tokens": real_tokens,
        "padded_tokens": padded_tokens,
        "collated_batches": len(batch_tokens),
        "tokens_per_second": real_tokens / max(seen["train_s"], 1e-9),
        "padded_tokens_per_second": padded_tokens / max(seen["train_s"], 1e-9),
        "timeline": timeline,
    }
