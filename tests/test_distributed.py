"""The training loop under `accelerate launch`: 2 CPU processes (gloo) against 1 process with the same global
batch, and the shipped accelerate configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench.serve_load import free_port

from conftest import BOOK_BODY, REPO, set_flags, train_losses, write

ACCELERATE_CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
COMMON = [
    "train.method=full",
    "train.steps=6",
    "train.micro_batch_size=2",
    "train.learning_rate=3e-3",
    "train.warmup_steps=1",
    "train.checkpoint_every=3",
    "train.eval_every=3",
    "train.sample_every=1000",
    "model.max_length=32",
    "eval.stride=16",
    "data.split=random",
]


def _sets(*extra: str) -> list[str]:
    return set_flags(*COMMON, *extra)


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "cache" not in p.parts}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    lines = [line for line in BOOK_BODY.splitlines() if len(line) > 40]
    return write(
        tmp_path_factory.mktemp("dist") / "book.txt", "\n\n".join(f"{line} ({i})" for i in range(8) for line in lines)
    )


def _launcher(name: str) -> list[str]:
    port = str(free_port())  # a fixed port could clash with another run; 0 would leave the ranks disagreeing
    if name == "accelerate":
        cfg = str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml")
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            cfg,
            "--main_process_port",
            port,
            "-m",
            "shelley",
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        port,
        "-m",
        "shelley",
    ]


def _launch(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a launcher; on timeout kill it and its ranks (torchrun starts them in sessions of their own, so a
    plain ``subprocess.run`` timeout would leave them running and holding the pipes) and fail the test."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import psutil

        launcher = psutil.Process(proc.pid)
        for p in [*launcher.children(recursive=True), launcher]:
            p.kill()
        proc.communicate()
        pytest.fail(f"a rank hung: no exit after {timeout:.0f} s")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, corpus, tiny_model_dir) -> Path:
    one = tmp_path_factory.mktemp("one") / "run"
    base = ["train", str(corpus), "--model", str(tiny_model_dir)]
    # One process: 2 micro-batches of 2 per step. Two processes: 1 micro-batch of 2 each, the same 4 blocks.
    subprocess.run(
        [sys.executable, "-m", "shelley", *base, "--run-dir", str(one), *_sets("train.grad_accum=2")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return one


@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_two_processes_match_one_with_the_same_global_batch(launcher, tmp_path, corpus, tiny_model_dir, one_process):
    one, two = one_process, tmp_path / "two"
    base = ["train", str(corpus), "--model", str(tiny_model_dir)]
    res = _launch([*_launcher(launcher), *base, "--run-dir", str(two), *_sets("train.grad_accum=1")], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = train_losses(one), train_losses(two)
    assert len(a) == len(b) == 6
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
    print(f"{launcher}: max |loss difference| over {len(a)} steps = {diff:.2e}")
    assert diff < 1e-4, (a, b)
    # Rank 0 writes everything; rank 1 adds only its own RNG state to each checkpoint (for exact resume).
    extra = _files(two) - _files(one)
    assert extra and all(x.startswith("checkpoints/") and x.endswith("random_states_1.pkl") for x in extra), extra
    assert _files(one) - _files(two) == set()


def test_a_time_budget_stops_every_rank_at_the_same_step(tmp_path, corpus, tiny_model_dir):
    # Rank 0 alone writes samples (every 2 steps here) while rank 1 waits for it. Before the ranks agreed on one
    # clock, rank 1 counted that wait as training time, stopped on its budget first, and rank 0 then waited
    # forever in its next all-reduce.
    two, budget = tmp_path / "two", 3.0
    sets = _sets(
        "train.grad_accum=1",
        "train.steps=100000",
        f"train.time_budget_s={budget}",
        "train.budget_clock=train",
        "train.sample_every=2",
        "train.eval_every=100000",
        "train.checkpoint_every=100000",
    )
    cmd = [*_launcher("torchrun"), "train", str(corpus), "--model", str(tiny_model_dir), "--run-dir", str(two), *sets]
    res = _launch(cmd, timeout=240)  # before the fix: a hang, so a failure here
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert 4 <= len(train) < 100000  # it trained, then stopped on the budget, not on train.steps
    assert train[-1]["train_s"] <= budget
    assert (two / "model" / "model.safetensors").exists()  # rank 0 got through to saving the model


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_parse(path):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.num_processes >= 2
    first = path.read_text().splitlines()[0]
    assert first.startswith("# accelerate launch --config_file configs/accelerate/" + path.name)


def test_there_are_configs_for_ddp_fsdp_and_deepspeed():
    kinds = {p.stem for p in ACCELERATE_CONFIGS}
    assert {"ddp_multi_gpu", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "cpu_2proc"} <= kinds
