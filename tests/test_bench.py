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
    for impl in ("reference", "reference-trl", "reference-trl-lora", "full", "lora"):
        r = contestants[impl]
        assert r["timeline"], impl  # periodic evals give the time-to-perplexity curve
        assert "seconds_to_target_perplexity" in r
        for key in keys:
            assert isinstance(r[key], int | float) and r[key] > 0 and math.isfinite(r[key]), (impl, key, r[key])
    ref = contestants["reference"]
    assert ref["padded_tokens"] >= ref["real_tokens"] and ref["padded_fraction_of_limit"] >= ref["fraction_of_limit"]
    for impl, peer in (("full", "reference-trl"), ("lora", "reference-trl-lora")):
        r = contestants[impl]
        assert r["speedup_tokens_per_s"] > 0
        assert math.isclose(r["speedup_vs_trl"], r["tokens_per_second"] / contestants[peer]["tokens_per_second"])
    assert "padding-free" in contestants["reference-trl"]["packing"]  # TRL's default packing, as users get it
    assert contestants["reference-trl"]["precision"] == contestants["full"]["precision"]  # bf16 where the CPU has it
    # The limit is the matmul rate measured in the contestant's precision over 6 (full) or 4 (LoRA) FLOPs per
    # parameter and token; bf16 is measured (and used by shelley's `auto`) only where the CPU has it in hardware.
    peak, params = train["train"]["matmul_peak"], train["train"]["parameters"]
    assert peak["gflops"] == max(peak["by_shape"].values()) > 0 and params > 0
    peaks = {"fp32": peak["gflops"]}
    if (bf16 := train["train"]["matmul_peak_bf16"]) is not None:
        assert bf16["dtype"] == "bf16" and bf16["gflops"] == max(bf16["by_shape"].values()) > 0
        peaks["bf16"] = bf16["gflops"]
    assert ref["precision"] == "fp32"  # the stock recipe as a user runs it
    for impl, flops in (("reference", 6), ("reference-trl", 6), ("reference-trl-lora", 4), ("full", 6), ("lora", 4)):
        r = contestants[impl]
        assert math.isclose(r["limit_tokens_per_s"] * flops * params, peaks[r["precision"]] * 1e9, rel_tol=1e-9)
        # ... and against the peak its own process measured around its training (the machine's speed drifts)
        own = r["own_peak"]
        assert own["before"] > 0 and own["after"] > 0
        assert math.isclose(own["gflops"], (own["before"] + own["after"]) / 2)
        assert math.isclose(r["fraction_of_own_limit"] * own["gflops"] * 1e9, r["tokens_per_second"] * flops * params)

    write = json.loads((out / "write.json").read_text())["write"]
    assert write["hf_one_at_a_time"]["tokens_per_second"] > 0 and write["shelley_batched"]["tokens_per_second"] > 0
    assert write["time_ratio"] > 0

    data = json.loads((out / "data.json").read_text())["data"]
    assert [s["copies"] for s in data["sizes"]] == [1, 2]
    assert all(s["tokens"] > 0 and s["seconds"]["total"] > 0 for s in data["sizes"])
    assert data["sizes"][1]["rows"] > data["sizes"][0]["rows"]  # the perturbed copy survives deduplication
    summary = (out / "summary.md").read_text()
    assert "| reference |" in summary and "reference padding: " in summary
    assert "| reference-trl |" in summary and "against the stronger reference (TRL SFTTrainer" in summary
    assert "| of own limit |" in summary


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
            | {"speedup_vs_trl": 1.234, "seconds_to_target_perplexity": 120.04}
            | {"time_ratio_to_reference": 0.1281},
            "lora": row
            | {"speedup_tokens_per_s": 2.1, "seconds_to_reference_perplexity": None, "time_ratio_to_reference": None},
        },
    }
    md = summary_md(train, None, None, "abc1234")
    table = [line.split("|") for line in md.splitlines() if line[:2] == "| "]
    cells = {row[1].strip(): [c.strip() for c in row[2:-1]] for row in table}
    rows = {name: c[-2] for name, c in cells.items() if c}  # time to the stock recipe's perplexity
    assert rows["reference"] == rows["reference-tuned"] == "-"
    assert rows["full"] == "38.6 s (0.13x)"
    assert rows["lora"] == "not reached"
    assert cells["full"][-1] == "120.0 s" and cells["lora"][-1] == "not reached"  # time to perplexity 36
    assert cells["full"][4] == "1.23" and cells["lora"][4] == "-"  # x TRL
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


def test_qlora_memory_rehearsal_runs_the_7b_path_on_a_miniature_and_deletes_its_checkpoint(tmp_path, novel_dir):
    """bench.qlora_memory on a 2-layer Mistral: the same write, 4-bit load, LoRA and steps as the 7B rehearsal."""
    from bench.qlora_memory import activation_estimate, mistral_7b_config, rehearse, summary_lines

    text = (novel_dir / "frankenstein.txt").read_text(encoding="utf-8")[:60_000]
    r = rehearse(text, steps=2, workdir=tmp_path, tiny=True)
    assert r["checkpoint_deleted"] and list(tmp_path.iterdir()) == []
    cfg = mistral_7b_config(tiny=True)
    h, f, kv = cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size * cfg.num_key_value_heads // 4
    # r=16 LoRA on q, k, v, o, gate, up, down of every layer: r * (in + out) each
    per_layer = 16 * (2 * (h + h) + 2 * (h + kv) + 3 * (h + f))
    tr = r["train"]
    assert tr["steps"] == 2 and tr["trainable_parameters"] == per_layer * cfg.num_hidden_layers
    assert math.isfinite(tr["last_loss"]) and tr["adamw_state_bytes"] == 2 * tr["adapter_bytes"]
    assert r["load"]["footprint_bytes"] < r["checkpoint"]["bytes"]  # 4-bit linear layers (the rest stays fp32)
    assert tr["peak_rss_bytes"] >= tr["rss_before_bytes"] > 0
    t4 = r["t4"]
    assert t4["fits"] and t4["expected_peak_bytes"] + t4["margin_bytes"] == t4["t4_bytes"]
    big = mistral_7b_config()
    assert big.num_hidden_layers == 32 and big.intermediate_size == 14336 and big.num_key_value_heads == 8
    est = activation_estimate(big, 1024, 2)
    assert est["total"] < activation_estimate(big, 1024, 4)["total"] < activation_estimate(big, 2048, 4)["total"]
    assert any("fits, margin" in line for line in summary_lines(r))


def test_attention_bench_times_two_kernels_that_agree(capsys):
    """`python -m bench.attention`: its eager kernel is the same attention as SDPA (outputs and gradients), so
    the timings it prints compare like with like."""
    import torch
    from bench.attention import _kernels, main

    torch.manual_seed(0)
    q = torch.randn(2, 4, 16, 8, requires_grad=True)  # (B, H, T, D)
    k, v = (torch.randn(2, 2, 16, 8, requires_grad=True) for _ in range(2))  # (B, KV, T, D): 2 query heads each
    results = {}
    for name, fn in _kernels(16, 2).items():
        q.grad = k.grad = v.grad = None
        out = fn(q, k, v)
        (out * torch.arange(8.0)).sum().backward()
        results[name] = [out.detach(), q.grad, k.grad, v.grad]
    for a, b in zip(results["sdpa"], results["eager"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    small = ["--batch", "1", "--length", "16", "--heads", "4", "--kv-heads", "2", "--head-dim", "8", "--reps", "2"]
    assert main(small) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert {(r[0], r[1]) for r in rows} >= {("fp32", "sdpa"), ("fp32", "eager")}
    assert all(float(r[3]) > 0 and float(r[6]) > 0 for r in rows)  # forward and backward milliseconds


def test_layers_bench_splits_a_real_stack_into_matrix_products_and_the_rest(tiny_model_dir, capsys):
    """`python -m bench.layers` on a tiny Llama: the model's own decoder cut to the asked depth, timed, and its op
    time split so that matrix products and the rest are parts of one whole."""
    from bench.layers import MATRIX_PRODUCTS, _stack, main, run

    decoder, config = _stack(str(tiny_model_dir), 2, "fp32")
    assert len(decoder.layers) == 2 and config.num_hidden_layers == 2
    r = run(str(tiny_model_dir), 2, batch=2, length=16, reps=2, precision="fp32")
    assert r["step_ms"] > 0 and r["gflops"] > 0
    assert 0 < r["matmul_ms"] < r["op_ms"]  # a tiny model's step is mostly not matmul, but has some
    assert r["top_other"] and all(name not in MATRIX_PRODUCTS for name, _ in r["top_other"])
    small = ["--model", str(tiny_model_dir), "--layers", "2", "--batch", "2", "--length", "16", "--reps", "2"]
    assert main([*small, "--precision", "fp32", "--peak-seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "2 decoder layers" in out and "of this machine's" in out and "matrix products" in out


def test_scene_speed_bench_times_a_real_scene_through_the_cli(tmp_path, tiny_run, capsys):
    """`python -m bench.scene_speed`: the real `shelley write --words` in its own process, its figures read from
    the scene's JSON; the targets are judged only at the 1,000 words they were set for."""
    from bench.scene_speed import main

    out = tmp_path / "speed.json"
    assert main([str(tiny_run), "--engines", "transformers", "--rounds", "1", "--words", "100", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    (r,) = doc["runs"]
    assert r["engine"] == "transformers" and r["words"] >= 80 and r["tokens"] > 0
    assert 0 < r["first_paragraph_s"] <= r["seconds"] < r["wall_seconds"]
    assert doc["summary"][0]["target_s"] is None
    printed = capsys.readouterr().out
    assert "n/a (set for 1,000 words)" in printed and doc["cpu"] in printed


def test_scene_speed_bench_alternates_engines_and_only_adds_rows(tmp_path, monkeypatch, capsys):
    """Each round runs every engine once, in order, so a machine that drifts weighs on all alike; medians and
    verdicts are per engine; ``--record`` adds one row per engine and never replaces one."""
    import shutil

    import bench.scene_speed as speed
    import pytest

    calls = []

    def fake(run, engine, words, seed, gguf):
        calls.append((engine, seed))
        secs = {"transformers": 50.0, "int8": 30.0, "llamacpp": 14.0}[engine] + seed - 1234
        figures = {"words": 1003, "tokens": 1190, "tokens_per_s": 1190 / secs, "resampled": 0, "longest_copy": 6}
        return {"engine": engine, "seconds": secs, "wall_seconds": secs + 5, "first_paragraph_s": 1.0} | figures

    monkeypatch.setattr(speed, "one_scene", fake)
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(REPO / "docs" / "results" / "scene_speed.json", results)
    before = json.loads((results / "scene_speed.json").read_text())["rows"]
    gguf = tmp_path / "m-q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    assert speed.main(["run", "--gguf", str(gguf), "--rounds", "3", "--record", "--results", str(results)]) == 0
    assert calls == [(e, 1234 + r) for r in range(3) for e in ("transformers", "int8", "llamacpp")]
    printed = capsys.readouterr().out
    assert "<= 40 s: missed" in printed and "<= 40 s: met" in printed and "<= 15 s: met" in printed

    rows = json.loads((results / "scene_speed.json").read_text())["rows"]
    assert rows[: len(before)] == before and len(rows) == len(before) + 3
    assert "51.0 s median (runs: 50.0, 51.0, 52.0 s" in rows[-3]["measured"]
    assert "transformers --int8" in rows[-2]["what"] and "on m-q8_0.gguf" in rows[-1]["what"]

    with pytest.raises(SystemExit) as err:  # llama.cpp asked for, and the run has no q8_0 export
        speed.main([str(tmp_path), "--engines", "llamacpp"])
    assert err.value.code == 2 and "--quant q8_0" in capsys.readouterr().err
