"""``shelley run``: corpus -> clean -> split -> train -> eval -> report, inside one wall-clock budget.

The budget is split by measurement, not by guess: the base model is scored first (perplexity and
generations, timed), the same time is reserved for scoring the fine-tuned model, and training gets the rest.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shelley.config import ShelleyConfig
from shelley.corpus import Corpus
from shelley.errors import ShelleyError
from shelley.io import check_output_dir
from shelley.records import EvalResult
from shelley.run import Run
from shelley.runtime import tune_allocator

# Measured in a 10-minute run on 2 cores: saving the fine-tuned model took under 5 s and scoring it took 0.99x
# the base model's time, yet the old reserve (x1.15 + 25 s) left 40 s of the budget unused.
SAVE_MARGIN_S = 15.0  # the final save, the loss plot and the reports
# Validation tokens each model is scored on (and training validates on) inside the budget, unless
# eval.max_eval_tokens says otherwise: Frankenstein's 10.7k and Pride and Prejudice's 15.1k are scored whole; Ann
# Radcliffe's three books hold 55k, whose scoring took a third of the 10 minutes (27 training steps were left).
SCORED_TOKENS = 16_384
SCORING_SLACK = 1.08  # the fine-tuned model is scored like the base one (same tokens, same lengths); jitter


def _reduced_attribution_test(cfg: ShelleyConfig, who, train_texts: list[str], val_texts: list[str], source: Path):
    """(the attribution test, None), or (None, why it is skipped): without a reference set the run goes on and
    its report says how to get one."""
    if not cfg.eval.run_attribution_bags:
        return None, "eval.run_attribution_bags is 0"
    from shelley.eval.voice import optional_attribution_test

    return optional_attribution_test(cfg, who, train_texts, val_texts, corpus=source)


def _prepare(cfg: ShelleyConfig, source: Path, run: Run, overwrite: bool):
    """Clean and split the corpus into the run's data dir; name its author. Returns (cfg, corpus, validation
    rows, build report, identity), the cfg a copy that records the author, title and prompts."""
    from shelley.data.build import prepare_splits, save_dataset
    from shelley.data.corpus import with_identity

    check_output_dir(run.root, overwrite=overwrite, flag="--run-dir")
    if run.root.exists():
        shutil.rmtree(run.root)
    splits, report = prepare_splits(source, cfg.data)
    save_dataset(splits, report, run.data_dir, overwrite=True)
    corpus = Corpus({k: [s.text for s in v] for k, v in splits.items()}, source=str(source), books=report.get("books"))
    cfg, who = with_identity(cfg, corpus)  # a copy: the caller's cfg stays as it was loaded
    return cfg, corpus, splits["validation"], report, who


def _scored_validation(rows, tokenizer, limit: int | None) -> tuple[list[str], dict[str, int]]:
    """The validation texts both models are scored on (and training validates on) inside the budget: all of
    them up to ``limit`` tokens; past it the first held-out chapters of each book, in proportion to its share of
    the validation text, so a corpus of several books cannot spend the job's budget on scoring."""
    lengths = [len(ids) + 1 for ids in tokenizer([r.text for r in rows], add_special_tokens=False)["input_ids"]]
    total = sum(lengths)
    keep = list(range(len(rows)))
    if limit is not None and total > limit:
        books: dict[str, list[int]] = {}
        for i, r in enumerate(rows):  # a book's sections are "Title · Chapter" (data.works); one file: one group
            books.setdefault((r.section or "").split(" · ")[0] if " · " in (r.section or "") else "", []).append(i)
        keep = []
        for idx in books.values():
            budget, used = limit * sum(lengths[i] for i in idx) / total, 0
            for i in idx:
                if used + lengths[i] > budget and used:
                    break
                keep.append(i)
                used += lengths[i]
        keep.sort()
    figures = {"texts": len(keep), "of_texts": len(rows), "tokens": sum(lengths[i] for i in keep), "of_tokens": total}
    return [rows[i].text for i in keep], figures


def _train_budget(scored: dict[str, Any], time_budget_s: float, used_s: float) -> float:
    """What is left for training once the fine-tuned model's scoring (timed on the base model) is reserved."""
    scoring_s = scored["perplexity"]["seconds"] + scored["generation_seconds"] + scored.get("scene_seconds", 0.0)
    voice = scored.get("voice")
    if voice and not voice.get("shared"):  # shared: generation_seconds already counts the pass that wrote it
        scoring_s += voice["seconds"]
    train_budget = time_budget_s - used_s - scoring_s * SCORING_SLACK - SAVE_MARGIN_S
    if train_budget < 30:
        raise ShelleyError(
            f"--time-budget {time_budget_s:.0f}s leaves {max(0.0, train_budget):.0f}s for training after scoring "
            f"the base model ({scoring_s:.0f}s); raise --time-budget, lower eval.max_eval_tokens or set "
            "eval.run_attribution_bags=0"
        )
    return train_budget


def run_pipeline(
    cfg: ShelleyConfig,
    source: Path,
    run_dir: Path,
    *,
    time_budget_s: float,
    overwrite: bool = False,
    keep_checkpoints: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> EvalResult:
    """Everything inside ``time_budget_s``. The report includes a reduced attribution test
    (``eval.run_attribution_bags`` bags per model) when a reference set is there; ``on_progress(model, words,
    needed)`` follows its generation."""
    from shelley.eval.evaluate import Evaluation
    from shelley.eval.report import write_eval
    from shelley.finetune.loop import train
    from shelley.finetune.methods import load_base_model, load_tokenizer_for_training
    from shelley.finetune.packing import encode_stream
    from shelley.generate import generate_texts

    tune_allocator()
    t0 = time.perf_counter()
    run = Run.for_pipeline(run_dir)
    cfg, corpus, val_rows, report, who = _prepare(cfg, source, run, overwrite)
    voice, skipped = _reduced_attribution_test(cfg, who, corpus.train, corpus.validation, source)
    tokenizer = load_tokenizer_for_training(cfg)
    model = load_base_model(cfg)
    scored_texts, scored = _scored_validation(val_rows, tokenizer, cfg.eval.max_eval_tokens or SCORED_TOKENS)
    flow = Evaluation(
        cfg, run, corpus, encode_stream(scored_texts, tokenizer, run.root / "cache", "validation"), tokenizer,
        identity=who, voice=voice, bags=cfg.eval.run_attribution_bags, voice_skipped=skipped,
        scenes=cfg.eval.run_scenes, scene_words=cfg.eval.scene_words, scene_test=voice, scenes_skipped=(
            "eval.run_scenes is 0: whole scenes take about a minute per 1,000 words and model on 2 CPU cores, more "
            f"than the job's budget spares; run `shelley eval {run.root} --scenes 10` for the full scene test"
        ), on_progress=on_progress,
    )  # fmt: skip
    base = flow.score("base", model)
    t_base = time.perf_counter() - t0
    try:
        cfg.train.time_budget_s = _train_budget(base, time_budget_s, t_base)
    except ShelleyError:
        shutil.rmtree(run.root, ignore_errors=True)  # no half-made run dir for the next try to trip over
        raise
    cfg.train.run_dir = str(run.train_dir)
    cfg.train.drop_checkpoints = not keep_checkpoints  # a finished run keeps its model, not its optimizer state
    result = train(
        cfg, corpus.train, scored_texts, run, model=model, tokenizer=tokenizer, final_eval=False, sampler=generate_texts
    )
    t_train = time.perf_counter() - t0 - t_base
    # `model` was trained in place (full) or wrapped with the trained adapter (LoRA): score it as it is.
    flow.score("finetuned", model)
    results, texts = flow.finish(result)
    results.time_budget_s = time_budget_s
    results.wall_seconds = round(time.perf_counter() - t0, 1)
    results.train_budget_s = round(cfg.train.time_budget_s, 1)
    results.seconds = {
        "prepare_and_score_base": round(t_base, 1),
        "train_and_save": round(t_train, 1),
        "score_finetuned": round(time.perf_counter() - t0 - t_base - t_train, 1),
    }
    results.data = {
        "rows": report["split"]["rows"], "overlap": report["overlap"], "books": report.get("books"), "scored": scored
    }  # fmt: skip
    return write_eval(run, results, texts)
