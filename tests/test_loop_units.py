"""The loop's small units on their own: the time-budget schedule, the checkpoint clock and the cross-rank
agreements (one process here; test_distributed.py runs them over two)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from shelley.config import load_config
from shelley.finetune.loop import BudgetSchedule, _agree_any, _agree_clocks, _checkpoint_due


def _tc(**sets):
    return load_config(overrides=[f"train.{k}={v}" for k, v in sets.items()]).train


def test_warmup_then_cosine_to_zero_at_the_horizon():
    s = BudgetSchedule(_tc(steps=100, warmup_steps=4))
    assert s.lr_lambda(0) == pytest.approx(1 / 5) and s.lr_lambda(3) == pytest.approx(4 / 5)
    assert s.lr_lambda(4) == pytest.approx(1.0) and s.lr_lambda(52) == pytest.approx(0.5)
    assert s.lr_lambda(100) == pytest.approx(0.0, abs=1e-12)


def test_the_cosine_ends_at_the_floor_it_is_given():
    s = BudgetSchedule(_tc(steps=100, warmup_steps=4, min_lr_ratio=0.25))
    assert s.lr_lambda(4) == pytest.approx(1.0) and s.lr_lambda(52) == pytest.approx(0.625)
    assert s.lr_lambda(100) == pytest.approx(0.25) and s.lr_lambda(500) == pytest.approx(0.25)


def test_the_horizon_fits_the_time_left_at_the_measured_pace():
    s = BudgetSchedule(_tc(steps=1000, warmup_steps=0, time_budget_s=100))
    for t in (2.0, 2.0, 2.0, 2.0):
        s.record(t)
    s.refit(step=4, spent=8.0, pace=s.pace)  # 92 s left at 2 s a step: 46 more steps
    assert s.horizon == 50 and s.lr_lambda(50) == pytest.approx(0.0, abs=1e-12)
    assert math.isclose(s.train_s, 8.0)


def test_the_horizon_never_passes_the_step_limit():
    s = BudgetSchedule(_tc(steps=1000, warmup_steps=0, time_budget_s=100), max_steps=80)
    s.refit(step=80, spent=50.0, pace=1.0)  # the last step of the pass, with budget to spare
    assert s.horizon == 80
    assert not s.out_of_time(step=80, spent=50.0, slowest=1.0)  # the step limit ended it, not the budget
    s.refit(step=79, spent=99.9, pace=1.0)  # out of time: one more step is still the horizon
    assert s.horizon == 80


def test_a_step_is_not_started_when_the_slowest_recent_one_would_overrun_the_budget():
    s = BudgetSchedule(_tc(steps=1000, time_budget_s=10))
    for t in (1.0, 1.0, 3.0):
        s.record(t)
    assert s.pace == pytest.approx(5 / 3) and s.slowest == 3.0
    assert not s.out_of_time(step=3, spent=6.9, slowest=s.slowest)  # 6.9 + 3 < 10
    assert s.out_of_time(step=3, spent=7.1, slowest=s.slowest)  # an average step would fit; a slow one would not


def _run(**sets):
    return SimpleNamespace(tc=_tc(**sets), checkpointed_at=0.0, world=1)


def test_the_checkpoint_clock():
    assert not _checkpoint_due(_run(), clock=1e9)  # by steps only
    run = _run(checkpoint_every_s=120)
    assert not _checkpoint_due(run, clock=119.0) and _checkpoint_due(run, clock=120.0)
    run.checkpointed_at = 120.0
    assert not _checkpoint_due(run, clock=200.0) and _checkpoint_due(run, clock=241.0)
    # Within one interval of the budget's end: the outputs are about to be saved, no checkpoint.
    run = _run(checkpoint_every_s=120, time_budget_s=300)
    assert _checkpoint_due(run, clock=150.0) and not _checkpoint_due(run, clock=181.0)


def test_one_process_agrees_with_itself():
    run = _run(time_budget_s=10)
    assert _agree_clocks(run, 1.0, 2.0, 3.0) == (1.0, 2.0, 3.0)
    assert _agree_any(run, True) and not _agree_any(run, False)


@pytest.mark.parametrize(
    ("cuda", "bf16_hw", "cpu_flags", "auto", "dtype"),
    [
        (True, False, "", "fp16", "float16"),  # a T4: bf16 only emulated; fp16 tensor cores with loss scaling
        (True, True, "", "bf16", "bfloat16"),  # an A100, L4 or H100
        (False, False, "avx2", "fp32", "float32"),  # a CPU without bf16 hardware (Zen 3)
        (False, False, "avx2 avx512_bf16", "bf16", "bfloat16"),  # Zen 4, Sapphire Rapids
    ],
)
def test_precision_auto_and_the_qlora_compute_dtype_follow_the_hardware(
    monkeypatch, cuda, bf16_hw, cpu_flags, auto, dtype
):
    import torch

    import shelley.runtime as rt
    from shelley.errors import ShelleyError
    from shelley.finetune.methods import qlora_compute_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    # torch counts emulation as support unless told not to: a T4 "supports" bf16 only with emulation.
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16_hw or including_emulation
    )
    monkeypatch.setattr(rt, "cpu_flags", lambda: frozenset(cpu_flags.split()))
    assert rt.resolve_precision("auto") == auto and rt.resolve_precision("fp32") == "fp32"
    assert qlora_compute_dtype("auto") == getattr(torch, dtype)
    assert qlora_compute_dtype("fp32") == torch.float32
    if auto != "bf16":
        where = "GPU" if cuda else "CPU"
        with pytest.raises(ShelleyError, match=rf"this {where} has no bf16 hardware.*train\.precision=auto"):
            qlora_compute_dtype("bf16")


def test_the_allocator_tuning_stands_aside_when_the_user_set_glibcs_mmap_threshold(monkeypatch):
    import shelley.runtime as rt

    monkeypatch.setattr(rt, "_applied", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(4 << 20))
    assert rt.tune_allocator() is False and rt._applied is False  # glibc already took the user's setting
