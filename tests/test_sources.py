"""Extra training sources for scratch models: formatting, the synthetic fallback and offline errors."""

from __future__ import annotations

import re

import pytest

from shelley.config import DataConfig
from shelley.data import sources
from shelley.errors import ShelleyError


def test_synthetic_arithmetic_is_correct_and_deterministic():
    rows = sources.synthetic_arithmetic(300, seed=1)
    assert rows == sources.synthetic_arithmetic(300, seed=1) != sources.synthetic_arithmetic(300, seed=2)
    checked = 0
    for r in rows:
        assert r.startswith("<|user|>\n") and "\n<|assistant|>\n" in r
        for a, op, b, c in re.findall(r"(\d+) ([-+×]) (\d+) = (\d+)", r):
            a, b, c = int(a), int(b), int(c)
            assert {"+": a + b, "-": a - b, "×": a * b}[op] == c
            checked += 1
    assert checked >= 300


def test_formatters_turn_hub_rows_into_text():
    oasst = [
        {"message_id": "q", "parent_id": None, "role": "prompter", "text": "Hi?", "lang": "en"},
        {"message_id": "a", "parent_id": "q", "role": "assistant", "text": "Hello.", "lang": "en"},
        {"message_id": "b", "parent_id": "q", "role": "assistant", "text": "Hola.", "lang": "es"},
    ]
    assert sources.format_oasst(oasst) == ["<|user|>\nHi?\n<|assistant|>\nHello."]
    gsm = sources.format_gsm8k([{"question": "2+2?", "answer": "2 and 2 make 4.\n#### 4"}])
    assert gsm == ["<|user|>\n2+2?\n<|assistant|>\n2 and 2 make 4.\nThe answer is 4."]
    code = sources.format_code_instructions([{"instruction": "Add", "input": "1, 2", "output": "3"}])
    assert code == ["<|user|>\nAdd\n1, 2\n<|assistant|>\n3"]
    wiki = sources.format_wikitext([{"text": " = Title = \n"}, {"text": ""}, {"text": " Some prose .\n"}])
    assert wiki == ["Some prose ."]


def _offline(name, max_rows):
    raise ConnectionError("Couldn't reach the Hub (offline mode)")


def test_unreachable_source_is_an_error_naming_the_fix():
    with pytest.raises(ShelleyError, match=r"'math' \(openai/gsm8k\) could not be fetched.*synthetic_fallback=true"):
        sources.load_sources(["math"], max_rows=10, seed=0, fallback=False, fetch=_offline)


def test_unreachable_source_falls_back_to_arithmetic_when_asked():
    notes = []
    out = sources.load_sources(
        ["chat", "arithmetic"], max_rows=7, seed=0, fallback=True, fetch=_offline, on_note=notes.append
    )
    assert list(out) == ["arithmetic (for chat)", "arithmetic"]
    assert all(len(v) == 7 for v in out.values())
    assert "could not be fetched" in notes[0] and "OpenAssistant/oasst1" in notes[0]


def test_unknown_source():
    with pytest.raises(ShelleyError, match=r"unknown data source 'poems'.*choose from chat, math, code, prose"):
        sources.load_sources(["poems"], max_rows=1, seed=0, fallback=True)


def test_with_sources_splits_each_source_into_train_and_validation():
    cfg = DataConfig(extra_sources=["arithmetic"], source_max_rows=50, validation_fraction=0.2)
    train, val = sources.with_sources(["book"], ["held out"], cfg)
    assert train[0] == "book" and val[0] == "held out"
    assert len(train) == 1 + 40 and len(val) == 1 + 10
    assert not set(train[1:]) & set(val[1:]) or len(set(train[1:] + val[1:])) < 50  # duplicates may repeat


def test_real_hub_fetch_offline_fails_cleanly(monkeypatch):
    """CI runs offline: the real `datasets` call must end in the one-line error, not a traceback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ShelleyError, match="could not be fetched"):
        sources.load_sources(["math"], max_rows=5, seed=0, fallback=False)


def test_train_cli_with_only_sources_says_what_it_used(cli, tmp_path):
    res = cli(
        "train",
        "--method",
        "scratch",
        "--run-dir",
        tmp_path / "run",
        "--set",
        "data.extra_sources=[prose]",
        "--set",
        "data.synthetic_fallback=true",
        "--set",
        "data.source_max_rows=150",
        *[
            x
            for s in [
                "model.vocab_size=300",
                "model.n_layers=1",
                "model.n_heads=2",
                "model.d_model=16",
                "model.max_length=32",
                "train.steps=2",
                "train.micro_batch_size=2",
                "eval.stride=16",
            ]
            for x in ("--set", s)
        ],
    )
    assert res.exit_code == 0, res.output
    assert "'prose' (Salesforce/wikitext) could not be fetched" in res.output
    assert (tmp_path / "run" / "model" / "config.json").exists()
