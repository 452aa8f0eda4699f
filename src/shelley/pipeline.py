"""``shelley run``: corpus -> clean -> split -> train -> eval -> report, inside one wall-clock budget.

The budget is split by measurement, not by guess: the base model is scored first (perplexity and
generations, timed), the same time is reserved for scoring the fine-tuned model, and training gets the rest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from shelley.config import ShelleyConfig
from shelley.errors import ShelleyError

SAVE_MARGIN_S = 25.0  # final checkpoint, saving the model, the loss plot and the reports
SCORING_SLACK = 1.15  # the fine-tuned model is scored like the base one; allow for jitter


def run_pipeline(
    cfg: ShelleyConfig, source: Path, run_dir: Path, *, time_budget_s: float, overwrite: bool = False
) -> dict[str, Any]:
    from shelley.data.build import prepare_splits, save_dataset
    from shelley.eval.report import combine, judge, score_model, write_eval
    from shelley.finetune.loop import train
    from shelley.finetune.methods import load_base_model, load_tokenizer_for_training
    from shelley.finetune.packing import encode_stream
    from shelley.io import check_output_dir
    from shelley.runtime import tune_allocator

    tune_allocator()

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    check_output_dir(run_dir, overwrite=overwrite, flag="--run-dir")
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    splits, report = prepare_splits(source, cfg.data)
    save_dataset(splits, report, run_dir / "data", overwrite=True)
    train_texts = [s.text for s in splits["train"]]
    val_texts = [s.text for s in splits["validation"]]

    tokenizer = load_tokenizer_for_training(cfg)
    model = load_base_model(cfg)
    stream = encode_stream(val_texts, tokenizer, run_dir / "cache", "validation")
    base = score_model(model, tokenizer, stream, cfg)
    scoring_s = base["perplexity"]["seconds"] + base["generation_seconds"]
    remaining = time_budget_s - (time.perf_counter() - t0)
    train_budget = remaining - scoring_s * SCORING_SLACK - SAVE_MARGIN_S
    if train_budget < 30:
        raise ShelleyError(
            f"--time-budget {time_budget_s:.0f}s leaves {max(0.0, train_budget):.0f}s for training after scoring "
            f"the base model ({scoring_s:.0f}s); raise --time-budget or lower eval.max_eval_tokens"
        )
    t_base = time.perf_counter() - t0
    cfg = cfg.model_copy(deep=True)
    cfg.train.time_budget_s = train_budget
    cfg.train.run_dir = str(run_dir / "train")
    result = train(cfg, train_texts, val_texts, run_dir / "train", model=model, tokenizer=tokenizer, final_eval=False)
    t_train = time.perf_counter() - t0 - t_base
    # `model` was trained in place (full) or wrapped with the trained adapter (LoRA): score it as it is.
    tuned = score_model(model, tokenizer, stream, cfg)
    training = json.loads((run_dir / "train" / "train_summary.json").read_text())
    results = judge(combine(cfg, base, tuned, training), run_dir / "train", cfg)
    results |= {
        "run_dir": str(run_dir),
        "time_budget_s": time_budget_s,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "train_budget_s": round(train_budget, 1),
        "seconds": {
            "prepare_and_score_base": round(t_base, 1),
            "train_and_save": round(t_train, 1),
            "score_finetuned": round(time.perf_counter() - t0 - t_base - t_train, 1),
        },
        "data": {"rows": report["split"]["rows"], "overlap": report["overlap"]},
    }
    write_eval(run_dir, results)
    del result
    return results
