"""Process-level settings that make CPU training faster, applied once by the commands that train or write.

glibc's malloc hands every block over 128 KiB back to the kernel as soon as it is freed, so each training
step mmaps and page-faults its activations, logits and gradients afresh (hundreds of MB). Raising the mmap
and trim thresholds keeps that memory in the process between steps. Measured on SmolLM2-135M full
fine-tuning on 2 cores: minor page faults 3.7M -> 1.4M, system time 22 s -> 11 s, ~100 -> ~118 tokens/s.

Transparent huge pages are deliberately left off. Both ways of asking for them were measured on a SmolLM2-135M
LoRA run (60 s and 90 s budgets, alternated with the plain setting): PyTorch's ``THP_MEM_ALLOC_ENABLE=1`` ran
222.5 and 223.6 tokens/s, glibc's ``glibc.malloc.hugetlb=1`` 227.7 and 228.9, the plain setting 232.8 and 232.4.

The price is memory: freed blocks stay resident, so the process's RSS is what the steps ever touched, not what
they hold at once. On SmolLM2 that is a few hundred MB; on a 7B model (``bench.qlora_memory``) it grew the RSS
of a QLoRA step far past its live tensors. Setting ``MALLOC_MMAP_THRESHOLD_`` in the environment (glibc reads it
at start-up) opts out: the user's setting wins and ``tune_allocator`` leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied = False


def tune_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the kernel (glibc only; no-op elsewhere)."""
    import os

    global _applied
    if _applied or not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return _applied
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        ok = False
    _applied = ok
    return ok


def cpu_info() -> dict[str, str]:
    """The first CPU's fields as the Linux kernel reports them (/proc/cpuinfo); empty elsewhere."""
    from pathlib import Path

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where the kernel does not say."""
    info = cpu_info()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there bf16 matmuls run about twice
    as fast as fp32 (measured 390 vs 170 GFLOP/s on 2 AMD Zen 4 cores); elsewhere they are emulated and slower.
    """
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})  # what the kernel reports, not a private torch probe


def has_fast_bf16() -> bool:
    """Whether the training device computes in bf16 at speed: a CUDA GPU with bf16 hardware (Ampere or later;
    not a T4, where torch would emulate it), else this CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return cpu_has_fast_bf16()


def resolve_precision(precision: str) -> str:
    """train.precision made concrete for the training device: "bf16", "fp16" or "fp32". ``auto`` is bf16 where
    the device has bf16 hardware, fp16 on a CUDA GPU without it (a T4: fp16 tensor cores, loss scaling), else
    fp32 (a CPU without bf16 hardware has no faster low precision)."""
    import torch

    if precision != "auto":
        return precision
    if has_fast_bf16():
        return "bf16"
    return "fp16" if torch.cuda.is_available() else "fp32"


def quiet_libraries(verbose: bool = False) -> None:
    """Turn the libraries' own chatter off (unless ``verbose``): transformers' and the Hub's progress bars and
    advisory warnings, datasets' bars, llama.cpp's log, and accelerate's note on every checkpoint that it dropped
    the tied head ("Removed shared tensor ... while saving": the tie is restored on load, which the tests check).
    shelley's own progress and messages stay. Environment variables set by the user win."""
    import logging
    import os
    import warnings

    if not verbose:
        # Renames inside the libraries (peft still calls transformers' gradient_checkpointing_enable): nothing
        # a user of shelley can act on.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    for name in ("accelerate", "llama-cpp-python"):  # llama.cpp's quantizer and loader log through the latter
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
    if not verbose:
        for name, value in {
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        }.items():
            os.environ.setdefault(name, value)
    if "transformers" in sys.modules:  # already imported (a notebook, a test): the variables above came too late
        from transformers.utils import logging as tf_logging

        tf_logging.set_verbosity_warning() if verbose else tf_logging.set_verbosity_error()
        tf_logging.enable_progress_bar() if verbose else tf_logging.disable_progress_bar()
