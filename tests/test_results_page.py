"""docs/results.md is generated from docs/results/*.json: it renders, and the committed page is up to date."""

from __future__ import annotations

import json

from bench.results import PAGE, RESULTS, render


def _row(name: str, passed: bool) -> dict:
    share = {"bags": 20, "target_bags": 15, "share": 0.75, "interval": [0.53, 0.89]}
    return {
        "kind": "run",
        "name": name,
        "note": "",
        "commit": "abc1234",
        "cpu": "Test CPU (family 1 model 2), 2 cores, no bf16 hardware",
        "date": "2026-11-30",
        "corpus": {"author": "Jane Austen", "title": "Pride and Prejudice"},
        "model": "smollm2-135m",
        "method": "full",
        "time_budget_s": 600,
        "train": {"steps": 40, "tokens_per_second": 110.4},
        "perplexity": {"base": 70.0, "finetuned": 30.0, "ratio": 30 / 70},
        "attribution": {
            "authors": 12,
            "bag_words": 1000,
            "valid": True,
            "own_held_out": share,
            "impostor_max_share": 0.0,
            "impostor_max_author": "wilde",
            "finetuned": share,
            "base": share | {"target_bags": 0, "share": 0.0, "interval": [0.0, 0.16]},
            "held_out": share,
            "verdict": {"passed": passed, "fisher_p": 1.2e-7},
            "generation": {"base": {"words": 20100, "seconds": 250.0}},
        },
    }


def test_render_a_run(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_row("austen_run", True)))
    (tmp_path / "b.json").write_text(json.dumps(_row("other_run", False)))
    page = render(tmp_path)
    assert "| austen_run | *Pride and Prejudice* (Jane Austen) | smollm2-135m (full) | 600 s | 40, 110 |" in page
    assert "70.00 → 30.00 (×0.429)" in page and "15/20 = 75% (53%–89%)" in page
    assert "PASS, Fisher p = 1.2e-07" in page and "FAIL" in page
    assert "abc1234" in page and "base: 20100 words in 250 s" in page


def test_committed_page_is_generated_from_the_records():
    assert PAGE.exists() and list(RESULTS.glob("*.json")), "run `python -m bench.results render`"
    assert PAGE.read_text() == render(RESULTS), "docs/results.md is stale: run `python -m bench.results render`"


def test_render_a_training_curve(tmp_path):
    row = {
        "kind": "training",
        "name": "scratch",
        "note": "",
        "commit": "abc1234",
        "cpu": "Test CPU",
        "date": "2026-11-30",
        "curve": [[50, 300.0], [100, 180.5], [150, 190.2]],
        "steps": 150,
        "epochs": 5.8,
        "stop_reason": "early stopping",
        "kept_step": 100,
        "best_step": 100,
        "budget_left_s": 200.4,
        "tokens_per_second": 3000.0,
        "train_seconds": 310.0,
    }
    (tmp_path / "s.json").write_text(json.dumps(row))
    page = render(tmp_path)
    assert (
        "| scratch | 150 (5.8) | early stopping, 200 s of the budget left | 50: 300.0, 100: 180.5, 150: 190.2 " in page
    )
    assert "| 100 (180.5) | 310.0 | abc1234, Test CPU |" in page
