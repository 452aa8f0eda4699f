"""The strongest stock recipe, as a user who knows the ecosystem would write it: TRL's ``SFTTrainer`` with
``packing=True`` (TRL's default best-fit-decreasing packing, padding-free), bf16 where the CPU multiplies bf16 in
hardware (fp32 elsewhere), gradient checkpointing off, block 128, batch 8. ``lora=True`` adds PEFT LoRA r=16 on
every linear layer (TRL's documented LoRA set-up); full fine-tuning otherwise.

Like ``bench.reference`` it stops at a budget of optimizer-step seconds (a ``TrainerCallback``), counts the real
tokens of the batches its steps trained on (the collator is wrapped after TRL built it; it collates one batch
ahead), and can score itself every ``eval_every`` steps outside the budget, for the time-to-perplexity figure.
``trl`` is a bench extra (``pip install -e '.[bench]'``), never a runtime dependency of shelley.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def train_trl(
    model,
    tokenizer,
    train_texts: list[str],
    *,
    budget_s: float,
    out_dir: Path,
    lora: bool = False,
    bf16: bool = False,
    max_length: int = 128,
    batch_size: int = 8,
    lr: float | None = None,
    seed: int = 42,
    eval_every: int | None = None,
    score: Callable | None = None,
) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    # The learning rates of the side-by-side: TRL's full fine-tune at 1e-4, its LoRA at 1e-3.
    lr = lr if lr is not None else (1e-3 if lora else 1e-4)
    seen = {"steps": 0, "train_s": 0.0}
    timeline: list[dict] = []
    batch_tokens: list[int] = []

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

    args = SFTConfig(
        output_dir=str(out_dir),
        packing=True,
        max_length=max_length,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        bf16=bf16,
        gradient_checkpointing=False,
        max_steps=100_000,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"text": train_texts}),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Budget()],
    )
    stock = trainer.data_collator

    def counting(rows):
        batch = stock(rows)
        # Padding-free batches are one row of real tokens; padded ones say which positions are real.
        mask = batch.get("attention_mask")
        batch_tokens.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    trainer.train()
    real_tokens = sum(batch_tokens[: seen["steps"]])
    return {
        "steps": seen["steps"],
        "train_seconds": seen["train_s"],
        "real_tokens": real_tokens,
        "collated_batches": len(batch_tokens),
        "tokens_per_second": real_tokens / max(seen["train_s"], 1e-9),
        "timeline": timeline,
        "packing": f"{args.packing_strategy}, padding-free" if trainer.padding_free else args.packing_strategy,
        "learning_rate": lr,
        "model": trainer.model,
    }
