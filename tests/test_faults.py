"""Training under faults: kills, signals, a full disk, NaN losses, damaged checkpoints."""

from __future__ import annotations

import errno
import json
import random
import signal
import subprocess
import time

import pytest
from bench import kill_resume as kr

from conftest import BOOK_BODY, tiny_causal_lm, write
from shelley.config import load_config
from shelley.data.ingest import snippets_from_book
from shelley.errors import ShelleyError
from shelley.finetune.loop import train
from shelley.run import Run, verify_checkpoint

TEXTS = [s.text for s in snippets_from_book(BOOK_BODY * 4)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    lines = [line for line in BOOK_BODY.splitlines() if len(line) > 40]
    rows = "text\n" + "".join(f'"{line.replace(chr(34), chr(39))} ({i})"\n' for i in range(12) for line in lines)
    return write(tmp_path_factory.mktemp("corpus") / "chunks.csv", rows)


@pytest.fixture(scope="module")
def kill_model(tmp_path_factory, corpus):
    return kr.tiny_model(tmp_path_factory.mktemp("kill-model") / "m", corpus)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus, kill_model):
    run = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(kr.train_cmd(corpus, kill_model, run), check=True, capture_output=True)
    return {"weights": kr.weights(run), "losses": kr.losses(run)}


@pytest.mark.parametrize("i", [0, 1], ids=["kill-mid-step", "kill-mid-checkpoint"])
def test_sigkill_then_resume_is_bit_identical(i, tmp_path, corpus, kill_model, straight):
    row = kr.run_once(corpus, kill_model, tmp_path, i, random.Random(i), straight)
    assert row["ok"], row
    assert ("mid-checkpoint" in row["kill"]) == (i == 1) or "finished" in row["kill"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(sig, tmp_path, corpus, kill_model):
    run = tmp_path / "run"
    cmd = kr.train_cmd(corpus, kill_model, run, "--set", "train.steps=400", "--set", "train.checkpoint_every=1000")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and kr.losses(run)):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and sig.name in err and "Traceback" not in err
    ckpt = Run.for_training(run).latest_checkpoint()
    assert ckpt is not None and verify_checkpoint(ckpt)
    done = max(kr.losses(run))
    assert ckpt.name == f"step-{done:06d}" and done < 400  # saved at the step it stopped, well before the end


def _cfg(**extra):
    sets = [
        "train.method=full",
        "model.name=tiny",
        "model.max_length=32",
        "train.steps=6",
        "train.micro_batch_size=4",
        "train.checkpoint_every=2",
        "train.eval_every=1000",
        "train.sample_every=1000",
        "eval.stride=16",
    ]
    return load_config(overrides=sets + [f"{k}={v}" for k, v in extra.items()])


def _train_tiny(cfg, run, tok, model=None, **kwargs):
    """``train`` ``model`` (default: a fresh tiny GPT-2) on the fixture texts, quietly."""
    model = model if model is not None else tiny_causal_lm("gpt2", len(tok))
    return train(cfg, TEXTS, TEXTS[:4], run, model=model, tokenizer=tok, show_progress=False, **kwargs)


def _tok(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_disk_full_keeps_the_previous_checkpoint_and_names_the_path(tmp_path, tiny_tokenizer_dir, monkeypatch):
    from accelerate import Accelerator

    tok = _tok(tiny_tokenizer_dir)
    real_save = Accelerator.save_state
    calls = {"n": 0}

    def save_until_full(self, output_dir=None, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the step-4 checkpoint: half written, then the disk is full
            real_save(self, output_dir, **kw)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", save_until_full)
    run = tmp_path / "run"
    with pytest.raises(ShelleyError) as err:
        _train_tiny(_cfg(), run, tok)
    msg = str(err.value)
    assert "step-000004" in msg and "No space left on device" in msg and "step-000002" in msg
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000002"]  # no torn temp dir left
    assert verify_checkpoint(run / "checkpoints" / "step-000002")


def test_unwritable_run_dir_is_named(cli, tmp_path, unwritable_dir, tiny_model_dir):
    book = write(tmp_path / "book.txt", BOOK_BODY)
    target = unwritable_dir / "run"
    res = cli("train", book, "--run-dir", target, "--model", tiny_model_dir, "--set", "data.split=random")
    flat = "".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert str(unwritable_dir).replace(" ", "") in flat and "--run-dir" in flat


def _nan_at(model, calls_with_nan):
    import torch

    forward = type(model).forward
    count = {"n": 0}

    def patched(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if self.training:
            count["n"] += 1
            if count["n"] in calls_with_nan:  # the loss is computed in the model or (fused) from its output
                out.logits = out.logits * torch.tensor(float("nan"))
                if out.loss is not None:
                    out.loss = out.loss * torch.tensor(float("nan"))
        return out

    return patched


def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_tokenizer_dir, monkeypatch):
    tok = _tok(tiny_tokenizer_dir)
    model = tiny_causal_lm("gpt2", len(tok))
    monkeypatch.setattr(type(model), "forward", _nan_at(model, {5}))
    with pytest.raises(ShelleyError, match=r"loss became nan at step 5.*step-000004.*nan_policy=skip"):
        _train_tiny(_cfg(), tmp_path / "run", tok, model=model)
    assert verify_checkpoint(tmp_path / "run" / "checkpoints" / "step-000004")


def test_nan_skip_policy_skips_the_step_and_trains_on(tmp_path, tiny_tokenizer_dir, monkeypatch):
    import torch

    tok = _tok(tiny_tokenizer_dir)
    model = tiny_causal_lm("gpt2", len(tok))
    monkeypatch.setattr(type(model), "forward", _nan_at(model, {3}))
    result = _train_tiny(_cfg(**{"train.nan_policy": "skip"}), tmp_path / "run", tok, model=model)
    assert result.steps == 6
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "skip"] == [3]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # The limit on skips still stops a run that only produces NaNs.
    model2 = tiny_causal_lm("gpt2", len(tok))
    monkeypatch.setattr(type(model2), "forward", _nan_at(model2, set(range(1, 100))))
    with pytest.raises(ShelleyError, match="after skipping 2 steps"):
        _train_tiny(
            _cfg(**{"train.nan_policy": "skip", "train.max_skipped_steps": 2}), tmp_path / "run2", tok, model=model2
        )


def test_a_damaged_checkpoint_is_detected_and_resume_falls_back(tmp_path, tiny_tokenizer_dir):
    tok = _tok(tiny_tokenizer_dir)
    cfg = _cfg(**{"train.keep_checkpoints": 3})
    _train_tiny(cfg, tmp_path / "run", tok, stop_after=4)
    newest = tmp_path / "run" / "checkpoints" / "step-000004"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")  # same size, different bytes
    assert not verify_checkpoint(newest)
    with pytest.warns(UserWarning, match="fails its manifest check; resuming from .*step-000002"):
        result = _train_tiny(cfg, tmp_path / "run", tok, resume=True)
    assert result.steps == 6


def test_weights_load_only_from_safetensors_or_weights_only(tmp_path, tiny_tokenizer_dir):
    """No pickle that can run code: weights are safetensors, and nothing in shelley calls torch.load unsafely."""
    import re

    from conftest import REPO

    tok = _tok(tiny_tokenizer_dir)
    _train_tiny(_cfg(), tmp_path / "run", tok)
    ckpt = Run.for_training(tmp_path / "run").latest_checkpoint()
    # Weights as safetensors; optimizer.bin / scheduler.bin hold tensors and numbers that accelerate loads with
    # torch.load(weights_only=True), checked below.
    assert (ckpt / "model.safetensors").exists() and not (ckpt / "pytorch_model.bin").exists()
    assert not list((tmp_path / "run" / "model").glob("*.bin"))
    for path in (REPO / "src").rglob("*.py"):
        for call in re.findall(r"torch\.load\(([^)]*)\)", path.read_text()):
            assert "weights_only=True" in call, f"{path}: torch.load({call})"


class _Payload:
    """A pickle that runs code when loaded: a hostile optimizer.bin must be refused, never executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_hostile_pickle_in_a_checkpoint_is_refused_not_run(tmp_path, tiny_tokenizer_dir):
    import hashlib
    import pickle

    tok = _tok(tiny_tokenizer_dir)
    cfg = _cfg()
    run = tmp_path / "run"
    _train_tiny(cfg, run, tok, stop_after=2)
    ckpt = Run.for_training(run).latest_checkpoint()
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Payload(str(marker)))
    (ckpt / "optimizer.bin").write_bytes(evil)
    manifest = json.loads((ckpt / "manifest.json").read_text())  # re-sign it: the attacker controls the dir
    manifest["files"]["optimizer.bin"] = {"bytes": len(evil), "sha256": hashlib.sha256(evil).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShelleyError, match="does not fit this model"):
        _train_tiny(cfg, run, tok, resume=True)
    assert not marker.exists()
