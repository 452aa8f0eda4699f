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
    contestants = train["train"]["contestants"]
    keys = ("steps", "train_seconds", "real_tokens", "tokens_per_second", "peak_rss_mb", "val_perplexity")
    keys += ("limit_tokens_per_s", "fraction_of_limit")
    for impl in ("reference", "full", "lora"):
        r = contestants[impl]
        for key in keys:
            assert isinstance(r[key], int | float) and r[key] > 0 and math.isfinite(r[key]), (impl, key, r[key])
    ref = contestants["reference"]
    assert ref["padded_tokens"] >= ref["real_tokens"] and ref["padded_fraction_of_limit"] >= ref["fraction_of_limit"]
    for impl in ("full", "lora"):
        assert contestants[impl]["speedup_tokens_per_s"] > 0
        assert contestants[impl]["timeline"], impl  # periodic evals give the time-to-perplexity curve
    # The limit is the matmul rate measured in the contestant's precision over 6 (full) or 4 (LoRA) FLOPs per
    # parameter and token; bf16 is measured (and used by shelley's `auto`) only where the CPU has it in hardware.
    peak, params = train["train"]["matmul_peak"], train["train"]["parameters"]
    assert peak["gflops"] == max(peak["by_shape"].values()) > 0 and params > 0
    peaks = {"fp32": peak["gflops"]}
    if (bf16 := train["train"]["matmul_peak_bf16"]) is not None:
        assert bf16["dtype"] == "bf16" and bf16["gflops"] == max(bf16["by_shape"].values()) > 0
        peaks["bf16"] = bf16["gflops"]
    assert ref["precision"] == "fp32"  # the stock recipe as a user runs it
    for impl, flops in (("reference", 6), ("full", 6), ("lora", 4)):
        r = contestants[impl]
        assert math.isclose(r["limit_tokens_per_s"] * flops * params, peaks[r["precision"]] * 1e9, rel_tol=1e-9)

    write = json.loads((out / "write.json").read_text())["write"]
    assert write["hf_one_at_a_time"]["tokens_per_second"] > 0 and write["shelley_batched"]["tokens_per_second"] > 0
    assert write["time_ratio"] > 0

    data = json.loads((out / "data.json").read_text())["data"]
    assert [s["copies"] for s in data["sizes"]] == [1, 2]
    assert all(s["tokens"] > 0 and s["seconds"]["total"] > 0 for s in data["sizes"])
    assert data["sizes"][1]["rows"] > data["sizes"][0]["rows"]  # the perturbed copy survives deduplication
    summary = (out / "summary.md").read_text()
    assert "| reference |" in summary and "reference padding: " in summary


def test_summary_table_formats_time_to_the_reference_perplexity():
    """The summary reads as a table: seconds with the ratio, "not reached" for a contestant that never got
    there, and the commit the numbers belong to (it once printed raw floats and None)."""
    from bench.__main__ import summary_md

    row = {"steps": 10, "tokens_per_second": 100.0, "fraction_of_limit": 0.5, "limit_tokens_per_s": 200.0}
    row |= {"peak_rss_mb": 4000.0, "val_perplexity": 40.0}
    padding = {"real_tokens": 1000, "padded_tokens": 1600, "padded_fraction_of_limit": 0.8}
    train = {
        "matmul_peak": {"gflops": 180.0},
        "parameters": 134_515_008,
        "contestants": {
            "reference": row | padding,
            "reference-tuned": row | {"speedup_tokens_per_s": 1.1},  # a multiple, but never timed to the perplexity
            "full": row
            | {"speedup_tokens_per_s": 1.6, "seconds_to_reference_perplexity": 38.61234}
            | {"time_ratio_to_reference": 0.1281},
            "lora": row
            | {"speedup_tokens_per_s": 2.1, "seconds_to_reference_perplexity": None, "time_ratio_to_reference": None},
        },
    }
    md = summary_md(train, None, None, "abc1234")
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in md.splitlines() if line[:2] == "| "}
    assert rows["reference"] == rows["reference-tuned"] == "-"
    assert rows["full"] == "38.6 s (0.13x)"
    assert rows["lora"] == "not reached"
    assert "commit abc1234" in md and "None" not in md
    # 600 of 1,600 positions are padding; at 80% of the limit counting them, dropping them is worth 1.60x
    assert "reference padding: 38% of the positions it computes on" in md
    assert "runs at 80% of its limit" in md and "would be 1.60x its real tokens/s" in md


def test_reference_counts_only_the_batches_its_steps_trained_on(tmp_path, tiny_model_dir, monkeypatch):
    """accelerate's data loader collates one batch ahead; that batch is never trained on, so it must not count
    toward the reference's real tokens (it inflated the reference's tokens/s by one batch in ~60)."""
    from bench.reference import train_reference
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling

    collated: list[int] = []
    padded: list[int] = []
    stock = DataCollatorForLanguageModeling.__call__

    def spy(self, rows):
        batch = stock(self, rows)
        collated.append(int(batch["attention_mask"].sum()))
        padded.append(batch["input_ids"].shape[0] * batch["input_ids"].shape[1])
        return batch

    monkeypatch.setattr(DataCollatorForLanguageModeling, "__call__", spy)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    texts = [" ".join(["word"] * (3 + i % 40)) for i in range(64)]  # unequal lengths: padding varies per batch
    stats = train_reference(model, tok, texts, budget_s=0.2, out_dir=tmp_path / "trainer", max_length=32)
    assert stats["steps"] >= 1 and stats["collated_batches"] == len(collated) >= stats["steps"]
    assert stats["real_tokens"] == sum(collated[: stats["steps"]])
    assert stats["padded_tokens"] == sum(padded[: stats["steps"]]) > stats["real_tokens"]  # texts of unequal length
    assert math.isclose(stats["tokens_per_second"], stats["real_tokens"] / stats["train_seconds"])
