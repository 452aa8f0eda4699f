"""Never hand the user a model worse than the best one seen: best-checkpoint keeping, early stopping, epochs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import BOOK_BODY, tiny_causal_lm
from shelley.config import load_config
from shelley.data.ingest import snippets_from_book
from shelley.finetune.loop import train

TRAIN = [s.text for s in snippets_from_book(BOOK_BODY * 4)]
# Validation text unlike the training text: a tiny model trained hard on the book gets better on it at first
# (common tokens), then worse (it memorises the book), which is the curve best-model keeping exists for.
VALIDATION = [
    "Numbers and letters: 12 apples, 7 pears, 3 plums; the market opens at 9 and closes at 5 every day.",
    "She typed quickly on the keyboard, saved the file, and sent the email before lunch on Tuesday.",
]


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _cfg(**extra):
    sets = {
        "train.method": "full",
        "model.name": "tiny",
        "model.max_length": 32,
        "train.steps": 40,
        "train.micro_batch_size": 4,
        "train.learning_rate": 2e-2,
        "train.warmup_steps": 1,
        "train.eval_every": 2,
        "train.sample_every": 1000,
        "train.checkpoint_every": 4,
        "eval.stride": 16,
    } | extra
    return load_config(overrides=[f"{k}={v}" for k, v in sets.items()])


def _run(cfg, run_dir, tok, seed=3, **kwargs):
    model = tiny_causal_lm("llama", len(tok), seed=seed)
    result = train(cfg, TRAIN, VALIDATION, run_dir, model=model, tokenizer=tok, show_progress=False, **kwargs)
    return result, model


def _evals(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["val_loss"]) for r in rows if r["kind"] == "eval"]


def test_a_model_trained_past_its_best_keeps_the_best_weights(tmp_path, tiny_tokenizer_dir):
    tok = _tok(tiny_tokenizer_dir)
    result, model = _run(_cfg(), tmp_path / "run", tok)
    evals = _evals(tmp_path / "run")
    best_step, best_loss = min(evals, key=lambda e: e[1])
    assert best_step < result.steps == 40, evals  # the curve turned: the last weights are not the best
    assert (result.best_step, result.kept_step) == (best_step, best_step)
    assert result.best_val_loss == pytest.approx(best_loss, abs=1e-6)  # metrics.jsonl rounds to 6 places
    # The same run stopped at the best step (same schedule), without keeping: its weights are the ones kept.
    _, at_best = _run(_cfg(**{"train.keep_best": "false"}), tmp_path / "short", tok, stop_after=best_step)
    saved = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    expected = dict(at_best.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, expected[name], rtol=0, atol=0)
    torch.testing.assert_close(saved["model.embed_tokens.weight"], expected["model.embed_tokens.weight"].detach())
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["kept_step"] == best_step and summary["stop_reason"] == "steps"


def test_keep_best_off_keeps_the_last_weights(tmp_path, tiny_tokenizer_dir):
    tok = _tok(tiny_tokenizer_dir)
    result, _ = _run(_cfg(**{"train.keep_best": "false"}), tmp_path / "run", tok)
    assert result.kept_step == 40 and result.best_step < 40 and not (tmp_path / "run" / "best").exists()


def test_early_stopping_on_a_flat_curve_says_so_and_reports_the_budget_left(tmp_path, tiny_tokenizer_dir):
    tok = _tok(tiny_tokenizer_dir)
    flat = {"train.learning_rate": 1e-12, "train.eval_every": 1, "train.patience": 2, "train.min_delta": 0.01}
    cfg = _cfg(**flat, **{"train.steps": 50, "train.time_budget_s": 900})
    result, _ = _run(cfg, tmp_path / "run", tok)
    assert result.steps == 3 and result.stop_reason == "early stopping"  # 1 best, then 2 without improvement
    assert result.stopped_early and result.budget_left_s is not None and result.budget_left_s > 800
    assert (tmp_path / "run" / "checkpoints" / "step-000003").exists()


def test_max_epochs_ends_training_at_that_many_passes(tmp_path, tiny_tokenizer_dir):
    tok = _tok(tiny_tokenizer_dir)
    result, _ = _run(
        _cfg(**{"train.steps": 1000, "train.max_epochs": 2, "train.eval_every": 1000}), tmp_path / "r", tok
    )
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in rows if r["kind"] == "train"]
    assert result.stop_reason == "max epochs" and result.steps < 1000
    assert epochs[-1] >= 2 and epochs[-2] < 2 and math.isclose(result.epochs, epochs[-1], abs_tol=1e-3)


def test_resume_after_the_best_step_keeps_the_same_model(tmp_path, tiny_tokenizer_dir):
    tok = _tok(tiny_tokenizer_dir)
    straight, straight_model = _run(_cfg(), tmp_path / "a", tok)
    kill_at = straight.best_step + 3  # past the best step, before the end: the best state must survive the kill
    assert kill_at < 40
    _run(_cfg(), tmp_path / "b", tok, stop_after=kill_at)
    resumed, resumed_model = _run(_cfg(), tmp_path / "b", tok, seed=99, resume=True)
    assert (resumed.kept_step, resumed.best_step) == (straight.kept_step, straight.best_step)
    expected = dict(straight_model.named_parameters())
    for name, p in resumed_model.named_parameters():
        torch.testing.assert_close(p, expected[name], rtol=0, atol=0)
