"""`python -m bench --quick`: the benchmark harness runs end to end and writes well-formed, positive figures.
Speed itself is never asserted here; the full bench prints and saves the numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import REPO


def test_bench_quick_writes_every_figure(tmp_path, tiny_model_dir, novel_dir):
    out = tmp_path / "results"
    env = os.environ | {"SHELLEY_DATA_DIR": str(novel_dir)}
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--model",
        str(tiny_model_dir),
        "--budget",
        "3",
        "--corpus",
        str(novel_dir / "frankenstein_chunks.csv"),
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    train = json.loads((out / "train.json").read_text())
    assert train["quick"] is True and train["commit"]
    for impl in ("reference", "full", "lora"):
        r = train["train"][impl]
        for key in ("steps", "train_seconds", "real_tokens", "tokens_per_second", "peak_rss_mb", "val_perplexity"):
            assert isinstance(r[key], int | float) and r[key] > 0 and math.isfinite(r[key]), (impl, key, r[key])
    for impl in ("full", "lora"):
        assert train["train"][impl]["speedup_tokens_per_s"] > 0
        assert train["train"][impl]["timeline"], impl  # periodic evals give the time-to-perplexity curve

    write = json.loads((out / "write.json").read_text())["write"]
    assert write["hf_one_at_a_time"]["tokens_per_second"] > 0 and write["shelley_batched"]["tokens_per_second"] > 0
    assert write["time_ratio"] > 0

    data = json.loads((out / "data.json").read_text())["data"]
    assert [s["copies"] for s in data["sizes"]] == [1, 2]
    assert all(s["tokens"] > 0 and s["seconds"]["total"] > 0 for s in data["sizes"])
    assert data["sizes"][1]["rows"] > data["sizes"][0]["rows"]  # the perturbed copy survives deduplication
    assert "| reference |" in (out / "summary.md").read_text()
