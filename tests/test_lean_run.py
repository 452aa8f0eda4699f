"""A lean, quiet run: checkpoints by time, no optimizer state left behind at a successful end, tied weights saved
as transformers expects, and no library note repeated per save."""

from __future__ import annotations

import json

import torch

from conftest import BOOK_BODY, set_flags, write
from shelley.run import Run
from test_finetune_loop import _cfg, _tiny_model, _tokenizer, _train


def _checkpoint_steps(run_dir) -> list[int]:
    return [json.loads((c / "trainer_state.json").read_text())["step"] for c in Run.for_training(run_dir).checkpoints()]


def test_checkpoints_come_by_time_as_well_as_by_steps(tmp_path, tiny_tokenizer_dir):
    tok = _tokenizer(tiny_tokenizer_dir)
    # By steps only (every 100 of 8): the one at the end.
    cfg = _cfg("full", **{"train.checkpoint_every": 100, "train.keep_checkpoints": 100})
    _train(cfg, tmp_path / "steps", _tiny_model("llama", len(tok)), tok)
    assert _checkpoint_steps(tmp_path / "steps") == [8]
    # Every 1 ms of training as well: one after each step.
    cfg = _cfg(
        "full", **{"train.checkpoint_every": 100, "train.keep_checkpoints": 100, "train.checkpoint_every_s": 0.001}
    )
    _train(cfg, tmp_path / "time", _tiny_model("llama", len(tok)), tok)
    assert _checkpoint_steps(tmp_path / "time") == list(range(1, 9))


def test_no_time_checkpoint_in_the_budgets_last_interval(tmp_path, tiny_tokenizer_dir):
    """With a 1,000 s budget and a 1,000 s interval there is never a full interval left: no time checkpoint."""
    tok = _tokenizer(tiny_tokenizer_dir)
    sets = {"train.checkpoint_every": 100, "train.keep_checkpoints": 100, "train.checkpoint_every_s": 0.001}
    cfg = _cfg("full", **sets, **{"train.time_budget_s": 1000})
    cfg.train.checkpoint_every_s = 1000.0
    _train(cfg, tmp_path / "run", _tiny_model("llama", len(tok)), tok)
    assert _checkpoint_steps(tmp_path / "run") == [8]  # only the one at the end (checkpoints are kept here)


def test_a_successful_end_drops_the_optimizer_state_and_keeps_the_model(tmp_path, tiny_tokenizer_dir):
    tok = _tokenizer(tiny_tokenizer_dir)
    cfg = _cfg("full", **{"train.drop_checkpoints": True, "train.eval_every": 2})
    result = _train(cfg, tmp_path / "run", _tiny_model("llama", len(tok)), tok)
    run = Run.for_training(tmp_path / "run")
    assert not run.checkpoints_dir.exists() and not run.best_dir.exists()
    assert (run.model_dir / "model.safetensors").exists() and run.metrics_file.exists()
    assert result.steps == 8 and run.train_result().steps == 8


def test_a_killed_run_with_drop_checkpoints_still_resumes(tmp_path, tiny_tokenizer_dir):
    tok = _tokenizer(tiny_tokenizer_dir)
    cfg = _cfg("full", **{"train.drop_checkpoints": True})
    _train(cfg, tmp_path / "run", _tiny_model("llama", len(tok)), tok, stop_after=5)
    assert _checkpoint_steps(tmp_path / "run") == [4, 5]  # an interrupted run keeps what it needs to go on
    result = _train(cfg, tmp_path / "run", _tiny_model("llama", len(tok)), tok, resume=True)
    assert result.steps == 8 and not Run.for_training(tmp_path / "run").checkpoints_dir.exists()


def test_tied_weights_are_saved_as_transformers_expects(tmp_path, tiny_tokenizer_dir):
    """GPT-2 ties its head to the embeddings: the saved model reloads with the tie and the same logits."""
    from transformers import AutoModelForCausalLM

    tok = _tokenizer(tiny_tokenizer_dir)
    model = _tiny_model("gpt2", len(tok))
    _train(_cfg("full"), tmp_path / "run", model, tok)
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    ids = torch.tensor([list(range(5, 25))])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, loaded.eval()(ids).logits)


def test_no_library_note_per_save_unless_verbose(cli, tmp_path, tiny_tokenizer_dir, caplog):
    """accelerate notes the dropped tied head at every checkpoint; shelley's output stays free of it."""
    from conftest import save_tiny_model

    model = save_tiny_model("gpt2", tiny_tokenizer_dir, tmp_path / "gpt2")
    corpus = write(tmp_path / "book.txt", BOOK_BODY * 6)
    sets = set_flags(
        "model.max_length=32", "train.steps=4", "train.checkpoint_every=1", "train.micro_batch_size=4",
        "eval.stride=16", "data.split=random", "train.method=full",
    )  # fmt: skip
    quiet = cli("train", corpus, "--model", model, "--run-dir", tmp_path / "q", *sets)
    assert quiet.exit_code == 0, quiet.stderr
    notes = [r for r in caplog.records if "Removed shared tensor" in r.getMessage()]
    assert not notes and "Loading weights" not in quiet.stderr
    assert len(Run.for_training(tmp_path / "q").checkpoints()) >= 1  # checkpoints were written, silently
    caplog.clear()
    loud = cli("--verbose", "train", corpus, "--model", model, "--run-dir", tmp_path / "v", *sets)
    assert loud.exit_code == 0, loud.stderr
    assert any("Removed shared tensor" in r.getMessage() for r in caplog.records)  # what --verbose is for
    cli("config", "presets")  # (leaves the libraries quiet again for the tests after this one)
