"""``Run`` owns the run directory: both shapes open in one place, run dirs written by an earlier release still open,
and what eval, card, demo and push read comes from the typed records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shelley.errors import ShelleyError
from shelley.records import SCHEMA_VERSION, EvalResult, TrainResult
from shelley.run import Run

FIXTURES = Path(__file__).parent / "fixtures" / "run-dirs"  # the release that wrote them: README.md there


@pytest.mark.parametrize("shape", ["run", "train"])
def test_a_run_dir_of_the_earlier_release_opens(shape):
    run = Run.open(FIXTURES / shape)
    assert run.root == FIXTURES / shape
    assert run.train_dir == (FIXTURES / "run" / "train" if shape == "run" else FIXTURES / "train")
    assert run.output == run.train_dir / "model" and (run.output / "config.json").exists()
    cfg = run.config()
    assert cfg.train.method == "full" and cfg.model.max_length == 32
    assert {r["split"] for r in run.corpus_rows()} == {"train", "validation"}
    train = run.train_result()
    assert isinstance(train, TrainResult) and train.steps > 0 and train.stop_reason
    ev = run.eval_result()  # eval.json of that release: no schema_version, read as version 1
    assert ev.schema_version == SCHEMA_VERSION == 1
    assert ev.perplexity.base.tokens == ev.perplexity.finetuned.tokens > 0
    assert ev.originality is not None and ev.originality.finetuned.samples == len(ev.generations)
    assert ev.training is not None and ev.training.steps == train.steps
    assert run.prompts() == ["The storm", "I was"]


def test_a_pipeline_runs_train_dir_finds_its_report_one_level_up():
    run = Run.open(FIXTURES / "run" / "train")
    assert run.root == run.train_dir  # `shelley eval RUN/train` writes beside the training files
    assert run.results_file() == FIXTURES / "run" / "eval.json"


def test_the_earlier_release_evaluated_run_renders_as_today(tmp_path, shelley_home):
    """eval.json of the earlier release -> EvalResult -> eval.json, eval.md and eval.html again: the record keeps
    every figure it read (a round trip loses nothing)."""
    from shelley.eval.report import render_eval_html, render_eval_md, write_eval

    run_dir = shutil.copytree(FIXTURES / "train", tmp_path / "train")
    run = Run.open(run_dir)
    before = json.loads(run.eval_json.read_text())
    ev = run.eval_result()
    write_eval(run, ev)
    after = json.loads(run.eval_json.read_text())
    assert after.pop("schema_version") == after["training"].pop("schema_version") == 1  # what this release adds
    assert after == before
    md, html = render_eval_md(ev), render_eval_html(ev)
    assert f"{ev.perplexity.finetuned.perplexity:.2f}" in md and f"{ev.perplexity.finetuned.perplexity:.2f}" in html


def test_a_newer_schema_is_refused_with_the_fix(tmp_path):
    doc = json.loads((FIXTURES / "train" / "eval.json").read_text()) | {"schema_version": SCHEMA_VERSION + 1}
    (tmp_path / "eval.json").write_text(json.dumps(doc))
    with pytest.raises(ShelleyError, match=r"newer shelley .* upgrade shelley"):
        EvalResult.load(tmp_path / "eval.json")


def test_a_damaged_report_names_the_part_and_the_fix(tmp_path):
    doc = json.loads((FIXTURES / "train" / "eval.json").read_text())
    del doc["perplexity"]
    (tmp_path / "eval.json").write_text(json.dumps(doc))
    with pytest.raises(ShelleyError, match="no valid 'perplexity'; run `shelley eval"):
        EvalResult.load(tmp_path / "eval.json")


def test_what_is_not_a_run_says_so(tmp_path):
    with pytest.raises(ShelleyError, match="not a shelley run dir"):
        Run.open(tmp_path)
    (tmp_path / "config.yaml").write_text("{}")
    with pytest.raises(ShelleyError, match="no trained model yet"):
        Run.open(tmp_path)
    assert Run.find(tmp_path) is None and Run.at(tmp_path).root == tmp_path


def test_checkpoints_are_listed_oldest_first_and_only_when_complete(tmp_path):
    run = Run.for_training(tmp_path)
    for step in (2, 10, 4):
        d = run.checkpoint_dir(step)
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text("{}")
        (d / "manifest.json").write_text(json.dumps({"step": step, "files": {}}))
    run.checkpoint_dir(12, tmp=True).mkdir()  # a checkpoint being written is never listed
    (run.checkpoint_dir(14)).mkdir()  # nor one without its manifest
    assert [p.name for p in run.checkpoints()] == ["step-000002", "step-000004", "step-000010"]
    assert run.latest_checkpoint(verify=True) == run.checkpoint_dir(10)
