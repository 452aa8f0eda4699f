"""`shelley train`, `shelley eval` and `shelley run` through the real CLI on a tiny local model."""

from __future__ import annotations

import json

import pytest

from conftest import BOOK_BODY, set_flags, write


@pytest.fixture
def corpus(tmp_path):
    return write(tmp_path / "book.txt", BOOK_BODY * 6)


SETS = [
    "model.max_length=32",
    "train.micro_batch_size=4",
    "train.learning_rate=3e-3",
    "train.warmup_steps=1",
    "eval.stride=16",
    "generation.max_new_tokens=8",
    "eval.prompts=[The storm, I was]",
    "data.split=block",
    "data.block_size=4",
]


def _sets(*extra: str) -> list[str]:
    return set_flags(*SETS, *extra)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_train_then_eval(cli, tmp_path, corpus, tiny_model_dir, method):
    run = tmp_path / "run"
    result = cli(
        "train",
        corpus,
        "--model",
        tiny_model_dir,
        "--method",
        method,
        "--run-dir",
        run,
        *_sets("train.steps=6", "train.eval_every=3", "train.sample_every=3", "data.dedup_near=false"),
    )
    assert result.exit_code == 0, result.stderr
    assert (run / "samples.jsonl").exists() and (run / "loss.png").exists()
    result = cli("eval", run)
    assert result.exit_code == 0, result.stderr
    ev = json.loads((run / "eval.json").read_text())
    p = ev["perplexity"]
    assert p["base"]["tokens"] == p["finetuned"]["tokens"] > 0  # the same validation tokens
    assert p["finetuned"]["perplexity"] < p["base"]["perplexity"]
    assert len(ev["generations"]) == 2 and ev["generations"][0]["prompt"] == "The storm"
    md = (run / "eval.md").read_text()
    assert "| base |" in md and "| fine-tuned |" in md
    floor = ev["style"]["delta_floor"]  # the author's own same-length text, to read Delta against
    assert floor["windows"] >= 1 and floor["min"] <= floor["median"] <= floor["max"]
    assert "floor a perfect imitator" in md and "floor a perfect imitator" in (run / "eval.html").read_text()


def test_train_qlora_without_bitsandbytes_is_a_clean_error(cli, tmp_path, corpus, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes.functional", None)  # as if not installed
    result = cli(
        "train",
        corpus,
        "--model",
        tiny_model_dir,
        "--method",
        "qlora",
        "--run-dir",
        tmp_path / "run",
        *_sets("data.dedup_near=false"),
    )
    assert result.exit_code == 2
    assert "qlora needs bitsandbytes" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_train_unknown_model_lists_presets(cli, tmp_path, corpus):
    result = cli("train", corpus, "--model", "frankenllama", "--run-dir", tmp_path / "run", *_sets())
    assert result.exit_code == 2 and "smollm2-135m" in result.stderr


def test_train_model_path_without_weights(cli, tmp_path, corpus):
    (tmp_path / "empty-model").mkdir()
    result = cli("train", corpus, "--model", tmp_path / "empty-model", "--run-dir", tmp_path / "run", *_sets())
    assert (
        result.exit_code == 2 and "empty-model has no" in result.stderr
    )  # tokenizer or weights, whichever loads first


def test_eval_of_a_dir_that_is_not_a_run(cli, tmp_path):
    result = cli("eval", tmp_path)
    assert result.exit_code == 2 and "not a shelley run dir" in result.stderr


def test_a_budget_too_short_to_train_leaves_no_run_dir(cli, tmp_path, corpus, tiny_model_dir):
    run = tmp_path / "short"
    sets = _sets("data.dedup_near=false")
    result = cli("run", corpus, "--model", tiny_model_dir, "--run-dir", run, "--time-budget", 5, *sets)
    assert result.exit_code == 2 and "leaves" in result.stderr and "raise --time-budget" in result.stderr
    assert not run.exists()  # the next try needs no --overwrite


def test_run_end_to_end(cli, tmp_path, corpus, tiny_model_dir):
    run = tmp_path / "e2e"
    result = cli(
        "run",
        corpus,
        "--model",
        tiny_model_dir,
        "--run-dir",
        run,
        "--time-budget",
        120,
        *_sets("train.steps=10", "train.eval_every=1000", "train.checkpoint_every=5", "data.dedup_near=false"),
    )
    assert result.exit_code == 0, result.stderr
    ev = json.loads((run / "eval.json").read_text())
    assert ev["perplexity"]["ratio"] < 1
    assert ev["wall_seconds"] < 120
    # The fixture book's validation split holds fewer words than one attribution bag: skipped, and said why.
    assert "fewer than one bag" in ev["attribution_skipped"] and "Skipped:" in (run / "eval.md").read_text()
    assert ev["corpus"] == {"author": "the author of book", "title": "book"}
    assert (run / "data" / "dataset_dict.json").exists() and (run / "train" / "model").exists()
    assert not (run / "train" / "checkpoints").exists()  # a finished run drops its optimizer state
