"""`--method scratch`: a GPT and its tokenizer trained from nothing through the shared loop and the real CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import BOOK_BODY, scratch_args, train_losses, write
from shelley.config import load_config
from shelley.data.ingest import snippets_from_book
from shelley.errors import ShelleyError
from shelley.finetune.loop import train

RANDOM = ("--set", "data.split=random")  # the fixture book is one section: hold out random rows


def test_scratch_run_trains_its_tokenizer_and_exports_gpt2(scratch_run):
    from transformers import AutoConfig

    from shelley.generate.load import load_for_generation

    assert AutoConfig.from_pretrained(scratch_run / "model").model_type == "gpt2"
    assert (scratch_run / "tokenizer" / "tokenizer.json").exists()
    losses = train_losses(scratch_run)
    assert len(losses) == 30 and losses[-1] < losses[0] - 1.0  # from ~ln(320)=5.8 down
    samples = [json.loads(x) for x in (scratch_run / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {15, 30}
    loaded = load_for_generation(str(scratch_run))
    assert len(loaded.tokenizer) == loaded.model.config.vocab_size
    assert "<|user|>" in loaded.tokenizer.all_special_tokens
    text = "Café — naïve «quote» 数学 🙂"
    assert loaded.tokenizer.decode(loaded.tokenizer(text)["input_ids"]) == text


def test_scratch_resume_equals_uninterrupted_training(tmp_path):
    texts = [s.text for s in snippets_from_book(BOOK_BODY * 3)]
    sets = [s.replace("train.steps=30", "train.steps=8") for s in scratch_args()[1::2]]
    cfg = load_config(overrides=[*sets, "train.method=scratch", "train.checkpoint_every=4", "model.dropout=0.1"])
    train(cfg, texts, texts[:3], tmp_path / "a", show_progress=False)
    part = train(cfg, texts, texts[:3], tmp_path / "b", show_progress=False, stop_after=3)
    assert part.steps == 3 and not (tmp_path / "b" / "model").exists()
    torch.manual_seed(999)  # a resumed run must take nothing from the process's RNG state
    train(cfg, texts, texts[:3], tmp_path / "b", show_progress=False, resume=True)
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")


def test_eval_scratch_run_reports_unigram_baseline_and_prompt_set(cli, scratch_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(scratch_run, run)
    res = cli("eval", run, "--prompts", "math")
    assert res.exit_code == 0, res.output
    assert "unigram entropy" in res.output
    r = json.loads((run / "eval.json").read_text())
    assert r["labels"]["base"].startswith("untrained")
    u = r["unigram"]
    assert 0 < u["entropy"] <= u["cross_entropy"] + 1e-9  # the text's own frequencies fit it best
    assert u["tokens"] == r["perplexity"]["finetuned"]["tokens"]  # the same targets as the model's loss
    # Training moved the model far from its random start (ln 320 = 5.77 nats).
    assert r["perplexity"]["finetuned"]["nll"] < r["perplexity"]["base"]["nll"] - 1.0
    assert r["prompt_set"]["name"] == "math" and r["prompt_set"]["checked_samples"] == 5
    assert [g["expect"] for g in r["generations"]][:2] == ["68", "54"]
    md = (run / "eval.md").read_text()
    assert "unigram entropy of the validation text" in md and "trained from scratch" in md
    assert "trained from scratch" in (run / "eval.html").read_text()


def test_tokenizer_train_cli(cli, tmp_path):
    from transformers import PreTrainedTokenizerFast

    book = write(tmp_path / "book.txt", BOOK_BODY * 3)
    out = tmp_path / "tok"
    res = cli("tokenizer", "train", book, "--vocab-size", "300", "--out", out, *RANDOM)
    assert res.exit_code == 0, res.output
    assert "characters per token on the validation text" in " ".join(res.output.split())
    tok = PreTrainedTokenizerFast.from_pretrained(out)
    assert len(tok) == 300 and tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert cli("tokenizer", "train", book, "--vocab-size", "300", "--out", out).exit_code == 2  # exists
    again = cli("tokenizer", "train", book, "--vocab-size", "280", "--out", out, "--overwrite", *RANDOM)
    assert again.exit_code == 0, again.output
    assert len(PreTrainedTokenizerFast.from_pretrained(out)) == 280


def test_tokenizer_vocab_too_small_writes_nothing(cli, tmp_path):
    book = write(tmp_path / "book.txt", BOOK_BODY)
    res = cli("tokenizer", "train", book, "--vocab-size", "100", "--out", tmp_path / "tok")
    assert res.exit_code == 2 and "at least 261" in res.output
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["model.d_model=30", "model.n_heads=4"], "not divisible by model.n_heads"),
        (["model.vocab_size=200"], "model.vocab_size=200 is too small"),
        (["model.max_length=4096"], "fewer than one block"),
    ],
)
def test_scratch_bad_config_exits_2_and_writes_nothing(cli, tmp_path, sets, message):
    book = write(tmp_path / "book.txt", BOOK_BODY)
    extra = [x for s in sets for x in ("--set", s)]
    args = scratch_args(drop=("data.extra_sources",))
    res = cli("train", book, "--method", "scratch", "--run-dir", tmp_path / "run", *args, *extra)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


def test_resume_with_another_architecture_is_refused(cli, scratch_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(scratch_run, run)
    book = write(tmp_path / "book.txt", BOOK_BODY)
    res = cli("train", book, "--method", "scratch", "--run-dir", run, "--resume", *scratch_args("model.n_layers=3"))
    assert res.exit_code == 2 and "model.n_layers" in res.output


def test_continuing_from_a_checkpoint_of_another_architecture(cli, scratch_run, tiny_model_dir, tmp_path):
    book = write(tmp_path / "book.txt", BOOK_BODY)
    base = ["train", book, "--method", "scratch", *scratch_args()]
    res = cli(*base, "--run-dir", tmp_path / "a", "--model", scratch_run / "model", "--set", "model.n_layers=3")
    assert res.exit_code == 2 and "different architecture (model.n_layers=3 vs 2" in res.output
    res = cli(*base, "--run-dir", tmp_path / "b", "--model", tiny_model_dir)
    assert res.exit_code == 2 and "not a scratch GPT" in res.output
    # The same shape continues training from the exported weights.
    res = cli(*base, "--run-dir", tmp_path / "c", "--model", scratch_run / "model", "--set", "train.steps=2")
    assert res.exit_code == 0, res.output


def test_tokenizer_model_vocab_mismatch_on_load(cli, scratch_run, tmp_path):
    from shelley.gpt.tokenizer import train_tokenizer

    model_dir = tmp_path / "model"
    shutil.copytree(scratch_run / "model", model_dir)
    bigger = train_tokenizer([BOOK_BODY * 3], 400)
    bigger.save_pretrained(model_dir)  # a tokenizer with more ids than the model has embeddings
    res = cli("write", model_dir, "The storm")
    assert res.exit_code == 2 and "vocab mismatch" in res.output and "400 tokens" in res.output


def test_scratch_preset_errors_without_a_tokenizer_file(tmp_path):
    cfg = load_config(overrides=["train.method=scratch", f"model.tokenizer={tmp_path}"])
    with pytest.raises(ShelleyError, match=r"no tokenizer\.json"):
        train(cfg, ["a b c"] * 50, ["a b"], tmp_path / "run", show_progress=False)
