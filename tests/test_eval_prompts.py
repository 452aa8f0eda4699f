"""Prompt sets for scripted evaluation and the unigram baseline of scratch runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import write
from shelley.errors import ShelleyError
from shelley.eval.prompts import BUILTIN, Prompt, load_prompts, score_expectations
from shelley.models.perplexity import unigram_baselines
from shelley.records import Generation


def test_builtin_sets():
    for name in ("math", "code"):
        got, prompts = load_prompts(name)
        assert got == name and len(prompts) == 5
    assert all(p.expect for p in BUILTIN["math"])
    assert load_prompts("prose") == ("prose", [])  # prose: the run's own corpus prompts, no author assumed


def test_prompt_files(tmp_path):
    name, ps = load_prompts(str(write(tmp_path / "p.txt", "First line\n\nSecond\\nline\n")))
    assert name == "p.txt" and ps == [Prompt("First line"), Prompt("Second\nline")]
    _, ps = load_prompts(str(write(tmp_path / "p.jsonl", '{"prompt": "2+2=", "expect": 4}\n{"prompt": "x"}\n')))
    assert ps == [Prompt("2+2=", "4"), Prompt("x")]


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "has no prompts"), ('{"text": "x"}\n', "line 1 is not"), (b"\xff\xfe", "not a UTF-8")],
)
def test_bad_prompt_files(tmp_path, content, message):
    path = write(tmp_path / ("p.jsonl" if isinstance(content, str) and content.startswith("{") else "p.txt"), content)
    with pytest.raises(ShelleyError, match=message):
        load_prompts(str(path))


def test_unknown_prompt_set():
    with pytest.raises(ShelleyError, match="neither a built-in set"):
        load_prompts("poetry")


def test_score_expectations_counts_hits():
    gens = [
        Generation(prompt="2+3", base=["= 5", "6"], finetuned=["5", "5!"]),
        Generation(prompt="free", base=["a"], finetuned=["b"]),
    ]
    out = score_expectations(gens, [Prompt("2+3", "5"), Prompt("free")])
    assert out == {"checked_samples": 2, "hits": {"base": 1, "finetuned": 2}}
    assert gens[0].expect == "5" and gens[1].expect is None


def test_unigram_baselines():
    vocab = 8
    val = np.array([0] + list(range(vocab)) * 10)  # targets uniform over 8 tokens
    u = unigram_baselines(np.array(list(range(vocab)) * 5), val, vocab)
    assert u["tokens"] == 80
    assert u["entropy"] == pytest.approx(math.log(vocab))
    assert u["cross_entropy"] == pytest.approx(math.log(vocab))
    skewed = unigram_baselines(np.array([0] * 100 + [1]), val, vocab)
    assert skewed["cross_entropy"] > u["cross_entropy"]  # a badly fitted unigram scores worse
