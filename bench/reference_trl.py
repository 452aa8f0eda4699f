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
    from trl import SFTConfig, SFTTrainer

    from bench.reference import StepBudget, trainer_args

    # The learning rates of the side-by-side: TRL's full fine-tune at 1e-4, its LoRA at 1e-3.
    lr = lr if lr is not None else (1e-3 if lora else 1e-4)
    budget = StepBudget(budget_s, eval_every, score)
    batch_tokens: list[int] = []
    args = SFTConfig(
        **trainer_args(out_dir, batch_size=batch_size, lr=lr, seed=seed),
        packing=True,
        max_length=max_length,
        bf16=bf16,
        gradient_checkpointing=False,
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
        callbacks=[budget],
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
    return budget.stats(batch_tokens) | {
        "packing": f"{args.packing_strategy}, padding-free" if trainer.padding_free else args.packing_strategy,
        "learning_rate": lr,
        "model": trainer.model,
    }
