"""Model, Space and dataset cards from measured results, and `shelley push` (dry run, token safety, errors)."""

from __future__ import annotations

import json
import secrets
import shutil

import pytest

from conftest import BOOK_BODY, write

# A fake token made fresh each run (never written in the source): the tests look for it in every output.
SECRET = "hf" + "_" + secrets.token_hex(17)


@pytest.fixture(scope="module")
def evaluated_run(tiny_run, tmp_path_factory):
    from typer.testing import CliRunner

    from shelley.cli import app

    run = tmp_path_factory.mktemp("hub") / "run"
    shutil.copytree(tiny_run, run)
    res = CliRunner().invoke(app, ["eval", str(run)])
    assert res.exit_code == 0, res.output
    return run


def test_model_card_parses_and_its_model_index_equals_eval_json(cli, evaluated_run):
    from huggingface_hub import ModelCard

    res = cli("card", evaluated_run)
    assert res.exit_code == 0, res.output
    card = ModelCard.load(evaluated_run / "README.md")
    ev = json.loads((evaluated_run / "eval.json").read_text())
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics["perplexity"] == ev["perplexity"]["finetuned"]["perplexity"]
    assert metrics["perplexity_ratio_vs_base"] == ev["perplexity"]["ratio"]
    assert metrics["max_copied_span_words"] == ev["originality"]["finetuned"]["longest_span_max"]
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "shelley" in card.data.tags
    text = card.text
    assert f"{ev['perplexity']['finetuned']['perplexity']:.2f}" in text
    assert "## Training data" in text and "## Limitations" in text
    assert ev["generations"][0]["prompt"] in text  # sample generations are in the card


def test_card_of_a_scratch_run(cli, scratch_run, tmp_path):
    from huggingface_hub import ModelCard

    run = tmp_path / "run"
    shutil.copytree(scratch_run, run)
    assert cli("eval", run).exit_code == 0
    assert cli("card", run, "--out", tmp_path / "card.md").exit_code == 0
    card = ModelCard.load(tmp_path / "card.md")
    assert card.data.base_model is None and "from-scratch" in card.data.tags
    assert "Unigram entropy of the validation text" in card.text


def test_card_needs_an_eval(cli, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "eval.json").unlink(missing_ok=True)
    res = cli("card", run)
    assert res.exit_code == 2 and "eval.json is missing; run `shelley eval" in " ".join(res.output.split())
    assert not (run / "README.md").exists()
    assert cli("card", tmp_path / "nowhere").exit_code == 2


def test_push_dry_run_lists_files_and_never_shows_the_token(cli, evaluated_run, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    res = cli("push", evaluated_run, "fan/frankenstein-tiny", "--dry-run")
    assert res.exit_code == 0, res.output
    out = res.output
    for name in ("README.md", "model.safetensors", "config.json", "tokenizer.json", "eval/eval.json", "eval/loss.png"):
        assert name in out
    assert "private" in out and "nothing sent" in out
    assert SECRET not in out
    leaked = [p for p in evaluated_run.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_push_with_a_token_that_cannot_reach_the_hub(cli, evaluated_run, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    res = cli("push", evaluated_run, "fan/frankenstein-tiny")
    assert res.exit_code == 2 and "push to fan/frankenstein-tiny failed" in res.output
    assert SECRET not in res.output and "Traceback" not in res.output


def test_push_without_a_token_says_how_to_log_in(cli, evaluated_run, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("shelley.hub.push.hf_token", lambda: None)
    res = cli("push", evaluated_run, "fan/frankenstein-tiny")
    assert res.exit_code == 2 and "hf auth login" in res.output


@pytest.mark.parametrize("repo", ["bad repo!", "a/b/c", "x" * 120])
def test_push_refuses_invalid_repo_names(cli, evaluated_run, repo):
    res = cli("push", evaluated_run, repo, "--dry-run")
    assert res.exit_code == 2 and "invalid repo name" in res.output


def test_push_refuses_an_unevaluated_run_unless_forced(cli, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "eval.json").unlink(missing_ok=True)
    res = cli("push", run, "fan/x", "--dry-run")
    assert res.exit_code == 2 and "--force" in res.output
    res = cli("push", run, "fan/x", "--dry-run", "--force")
    assert res.exit_code == 0 and "model.safetensors" in res.output and "README.md" not in res.output


def test_data_build_writes_a_dataset_card(cli, tmp_path):
    from huggingface_hub import DatasetCard

    book = write(tmp_path / "book.txt", BOOK_BODY * 2)
    res = cli("data", "build", book, "--out", tmp_path / "ds", "--set", "data.split=random")
    assert res.exit_code == 0, res.output
    card = DatasetCard.load(tmp_path / "ds" / "README.md")
    assert card.data.task_categories == ["text-generation"]
    assert "## Cleaning" in card.text
    res = cli(
        "data",
        "build",
        book,
        "--out",
        tmp_path / "ds2",
        "-s",
        "data.split=random",
        "--push-to-hub",
        "me/d",
        "--dry-run",
    )
    assert res.exit_code == 0 and "README.md" in res.output
