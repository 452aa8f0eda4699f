"""Mistral-7B QLoRA memory rehearsal, on whatever device this machine has (a CPU works: bitsandbytes' CPU backend).

    python -m bench.qlora_memory [--text FILE] [--steps 2] [--workdir DIR] [--record NAME] [--tiny]

1. ``write_checkpoint``: a checkpoint of Mistral-7B's exact architecture (``MistralConfig`` of the 7B) with random
   bf16 weights, written one decoder layer per safetensors shard, so memory holds one layer at a time (14.5 GB on
   disk; Mistral's real weights are not reachable offline, and memory does not depend on their values).
2. ``load_4bit``: shelley's own QLoRA load of it (the ``mistral-7b_qlora_gpu`` preset: NF4, double quantization),
   and its ``get_memory_footprint``.
3. ``rehearse``: ``shelley.finetune.loop.train`` with the preset's LoRA (r=16 on all seven projections), micro-batch
   and sequence length, gradient checkpointing, for ``--steps`` optimizer steps (grad_accum 1: accumulating more
   micro-batches into the same LoRA gradients adds no memory). Peak RSS is read from the kernel (VmHWM, reset after
   the load), and on a GPU ``torch.cuda.max_memory_allocated`` as well.
4. ``t4_projection``: the expected peak on a 16 GB T4, from the measured parts and the written-out reasoning.

The checkpoint is deleted afterwards (also on failure). Writes ``bench/results/qlora_memory.json``; ``--record NAME``
also keeps the figures in ``docs/results/NAME.json`` for the results page. ``--tiny`` runs the same path on a
2-layer Mistral in seconds (the suite's test).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATA = Path(os.environ.get("SHELLEY_DATA_DIR") or HERE.parents[1] / "shared" / "data")
GiB = 2**30
# What nvidia-smi reports on a Colab T4 (15,360 MiB); the CUDA context (cuBLAS, kernels) takes ~0.3-0.5 GiB of
# it before the first tensor, outside torch.cuda.max_memory_allocated.
T4_BYTES = 15360 * 2**20
CUDA_CONTEXT_BYTES = int(0.5 * GiB)


def mistral_7b_config(tiny: bool = False):
    """Mistral-7B-v0.1's architecture (its config.json on the Hub), or a 2-layer miniature of it."""
    from transformers import MistralConfig

    if tiny:
        return MistralConfig(
            vocab_size=512, hidden_size=64, intermediate_size=224, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, max_position_embeddings=1024, sliding_window=512, tie_word_embeddings=False,
        )  # fmt: skip
    return MistralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=32768, rope_theta=10000.0, sliding_window=4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="bfloat16",
    )  # fmt: skip


def write_checkpoint(config, out: Path, *, seed: int = 0) -> dict[str, Any]:
    """Random bf16 weights for ``config`` in ``out``, one shard per decoder layer (plus one for the embeddings,
    final norm and head) and the index ``from_pretrained`` reads. The names and shapes come from the model class
    built on the meta device, so they are exactly the 7B's."""
    import torch
    from rich.progress import track
    from safetensors.torch import save_file
    from transformers import MistralForCausalLM

    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in MistralForCausalLM(config).state_dict().items()}
    groups: dict[str, list[str]] = {}
    for name in shapes:
        m = re.match(r"model\.layers\.(\d+)\.", name)
        groups.setdefault(f"layer-{int(m.group(1)):03d}" if m else "outer", []).append(name)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    t0 = time.perf_counter()
    for i, names in enumerate(track(groups.values(), description="writing random 7B shards")):
        shard = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for n in names:
            if n.endswith("norm.weight"):
                tensors[n] = torch.ones(shapes[n], dtype=torch.bfloat16)  # RMSNorm gains start at one
            else:
                w = torch.empty(shapes[n], dtype=torch.float32).normal_(0, config.initializer_range, generator=gen)
                tensors[n] = w.to(torch.bfloat16)
            total += tensors[n].numel() * 2
            weight_map[n] = shard
        save_file(tensors, str(out / shard), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config.save_pretrained(out)
    parameters = sum(math.prod(s) for s in shapes.values())
    return {"bytes": total, "parameters": parameters, "seconds": time.perf_counter() - t0}


def _tokenizer(text: str, vocab_size: int, out: Path):
    """A byte-level BPE trained on the text, no larger than the model's vocabulary (Mistral's own tokenizer is
    on the Hub, and token ids are all the rehearsal needs)."""
    from shelley.gpt.tokenizer import train_tokenizer

    tok = train_tokenizer([text], min(vocab_size, 8000))
    tok.save_pretrained(out)
    return tok


def rehearsal_config(model_dir: Path, steps: int, tiny: bool):
    """The notebook's preset with the random checkpoint as its model: same 4-bit config, LoRA, micro-batch and
    sequence length; no validation, samples or checkpoints (they would only add minutes of 7B forwards)."""
    from shelley.config import load_config
    from shelley.models.registry import PRESETS

    sets = [
        f"model.name={model_dir}",
        f"train.steps={steps}",
        "train.grad_accum=1",
        "train.warmup_steps=0",
        "train.precision=auto",  # bf16 or fp16 on a GPU, fp32 on a CPU without bf16 hardware (the preset's choice)
        f"train.lora_target_modules={json.dumps(list(PRESETS['mistral-7b'].lora_targets))}",
        "train.eval_every=100000",
        "train.sample_every=100000",
        "train.checkpoint_every=100000",
        "train.drop_checkpoints=true",
        "train.time_budget_s=null",
    ]
    if tiny:
        sets.append("model.max_length=64")
    return load_config("mistral-7b_qlora_gpu", sets)


def _vm(key: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS: now; VmHWM: the peak since the last reset)."""
    m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) * 1024 if m else 0


class _LivePeak:
    """The peak of glibc's live malloc'd bytes (in-use heap chunks plus mmapped blocks) while the block runs,
    sampled every 5 ms on a thread (torch ops release the GIL); ``peak`` stays None without glibc."""

    def __init__(self) -> None:
        import ctypes
        import threading

        fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        info = type("mallinfo2", (ctypes.Structure,), {"_fields_": [(f, ctypes.c_size_t) for f in (*fields, "k")]})
        try:
            self._call = ctypes.CDLL("libc.so.6").mallinfo2
            self._call.restype = info
        except (OSError, AttributeError):
            self._call = None
        self.peak: int | None = self.live()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def live(self) -> int | None:
        if self._call is None:
            return None
        m = self._call()
        return m.uordblks + m.hblkhd

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak or 0, self.live() or 0)

    def __enter__(self):
        if self._call is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM), so the peak of the steps is not the peak of the load."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load_4bit(cfg) -> tuple[Any, dict[str, Any]]:
    """shelley's QLoRA load (``load_base_model``) of the checkpoint, with its time and footprint."""
    from shelley.finetune.methods import load_base_model

    t0 = time.perf_counter()
    model = load_base_model(cfg)
    return model, {
        "seconds": time.perf_counter() - t0,
        "footprint_bytes": model.get_memory_footprint(),
        "compute_dtype": str(model.config.quantization_config.bnb_4bit_compute_dtype).replace("torch.", ""),
        "rss_after_bytes": _vm("VmRSS"),
    }


def activation_estimate(config, tokens: int, compute_bytes: int) -> dict[str, int]:
    """Bytes the backward pass holds, by the layer structure, with gradient checkpointing of each decoder layer:
    the layer inputs of all layers (the residual stream stays fp32: the embeddings are fp32 after k-bit
    preparation), one layer's recomputed internals, and the head's logits with their loss.

    Per token, one layer keeps: fp32 RMSNorm inputs and outputs (4h) and LoRA dropout outputs (6h + f); in the
    compute dtype, the inputs cast for the 4-bit matmuls (6h + f), q, k, v and the attention output (2h + 2kv), and
    the MLP's gate, up, activation and product (4f)."""
    h, f, n_layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    kv = h * config.num_key_value_heads // config.num_attention_heads
    checkpoints = n_layers * tokens * h * 4
    layer = tokens * (4 * (4 * h + 6 * h + f) + compute_bytes * (6 * h + f + 2 * h + 2 * kv + 4 * f))
    head = tokens * vocab * (compute_bytes + 4 * 3)  # logits; fp32 upcast, log-softmax, its gradient
    return {"layer_inputs": checkpoints, "one_layer": layer, "head_and_loss": head, "total": checkpoints + layer + head}


def rehearse(text: str, *, steps: int = 2, workdir: Path | None = None, tiny: bool = False) -> dict[str, Any]:
    """Write, load, train ``steps`` steps, measure; the checkpoint and run dir are deleted before returning."""
    import torch

    from shelley.finetune.loop import train
    from shelley.runtime import quiet_libraries

    quiet_libraries()
    config = mistral_7b_config(tiny)
    root = Path(tempfile.mkdtemp(prefix="shelley-qlora-7b-", dir=workdir))
    report: dict[str, Any] = {"architecture": "Mistral-7B-v0.1" if not tiny else "Mistral (2-layer miniature)"}
    t_all = time.perf_counter()
    try:
        report["checkpoint"] = write_checkpoint(config, root / "model")
        tok = _tokenizer(text, config.vocab_size, root / "model")
        cfg = rehearsal_config(root / "model", steps, tiny)
        model, report["load"] = load_4bit(cfg)
        split = int(len(text) * 0.95)
        peak_reset = _reset_peak()
        rss0 = _vm("VmRSS")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        with _LivePeak() as live:
            live0 = live.live()
            result = train(
                cfg, [text[:split]], [text[split:]], root / "run", model=model, tokenizer=tok, final_eval=False
            )
        trainable = [p for p in model.parameters() if p.requires_grad]
        n_train = sum(p.numel() for p in trainable)
        tokens = cfg.train.micro_batch_size * cfg.model.max_length
        compute_bytes = 4 if report["load"]["compute_dtype"] == "float32" else 2
        report["train"] = {
            "steps": result.steps,
            "micro_batch_size": cfg.train.micro_batch_size,
            "max_length": cfg.model.max_length,
            "gradient_checkpointing": cfg.train.gradient_checkpointing,
            "seconds_per_step": result.train_seconds / max(result.steps, 1),
            "last_loss": result.last_loss,
            "trainable_parameters": n_train,
            "adapter_bytes": sum(p.numel() * p.element_size() for p in trainable),
            # torch AdamW keeps exp_avg and exp_avg_sq in the parameters' dtype (fp32 LoRA); the GPU path's
            # paged 8-bit AdamW keeps one byte per state and parameter.
            "adamw_state_bytes": 2 * sum(p.numel() * p.element_size() for p in trainable),
            "footprint_after_prepare_bytes": model.get_memory_footprint(),
            "rss_before_bytes": rss0,
            "peak_rss_bytes": _vm("VmHWM") if peak_reset else None,
            "live_before_bytes": live0,
            "peak_live_bytes": live.peak,
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        }
        report["activations_estimate"] = activation_estimate(config, tokens, compute_bytes)
        report["t4"] = t4_projection(report, config, tokens)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report["checkpoint_deleted"] = not root.exists()
    report["seconds"] = time.perf_counter() - t_all
    return report


def t4_projection(report: dict[str, Any], config, tokens: int) -> dict[str, Any]:
    """The expected peak of the same steps on a 16 GB T4 (fp16 compute: no bf16 hardware there).

    weights: the footprint after k-bit preparation, measured (bitsandbytes' 4-bit format is the same on every
    device; the embeddings, head and norms are fp32 after preparation on both). adapters: fp32 LoRA weights and
    their gradients, measured; optimizer: paged 8-bit AdamW, two bytes per trainable parameter. activations: the
    measured working set of the steps here (peak live bytes above those before them, else the same of the RSS,
    less adapters, gradients and AdamW state), scaled by the layer-structure estimate's ratio of fp16 to this
    run's compute dtype; where this machine gives no measured peak, the estimate itself. Plus the CUDA context
    and the largest 4-bit weight dequantized to fp16 for its matmul."""
    tr = report["train"]
    weights = tr["footprint_after_prepare_bytes"]
    adapters = tr["adapter_bytes"]
    grads = adapters
    optimizer = 2 * tr["trainable_parameters"]
    here = report["activations_estimate"]["total"]
    fp16 = activation_estimate(config, tokens, 2)["total"]
    if tr.get("peak_live_bytes") is not None or tr["peak_rss_bytes"] is not None:
        if tr.get("peak_live_bytes") is not None:  # live bytes: the analogue of max_memory_allocated
            grown, what = tr["peak_live_bytes"] - tr["live_before_bytes"], "live malloc peak"
        else:
            grown, what = tr["peak_rss_bytes"] - tr["rss_before_bytes"], "peak RSS"
        measured = grown - adapters - grads - tr["adamw_state_bytes"]
        activations = int(max(measured, 0) * fp16 / here)
        basis = f"{what} of the steps here less adapters, gradients and AdamW state, scaled to fp16 by the estimate"
    else:
        measured, activations, basis = None, fp16, "layer-structure estimate"
    dequant = config.intermediate_size * config.hidden_size * 2
    total = weights + adapters + grads + optimizer + activations + dequant + CUDA_CONTEXT_BYTES
    return {
        "weights_bytes": weights,
        "adapters_and_grads_bytes": adapters + grads,
        "paged_adamw8bit_bytes": optimizer,
        "activations_measured_here_bytes": measured,
        "activations_bytes": activations,
        "activations_basis": basis,
        "dequant_transient_bytes": dequant,
        "cuda_context_bytes": CUDA_CONTEXT_BYTES,
        "expected_peak_bytes": total,
        "t4_bytes": T4_BYTES,
        "margin_bytes": T4_BYTES - total,
        "fits": total < T4_BYTES,
    }


def summary_lines(r: dict[str, Any]) -> list[str]:
    tr, t4, est = r["train"], r["t4"], r["activations_estimate"]
    g = lambda b: f"{b / GiB:.2f} GiB" if b is not None else "n/a"  # noqa: E731
    verdict = "fits" if t4["fits"] else "does NOT fit"
    return [
        f"{r['architecture']}: {r['checkpoint']['parameters'] / 1e9:.2f} B parameters, random bf16 checkpoint "
        f"{g(r['checkpoint']['bytes'])} written in {r['checkpoint']['seconds']:.0f} s, "
        + ("deleted afterwards" if r["checkpoint_deleted"] else "NOT deleted"),
        f"4-bit load ({r['load']['compute_dtype']} compute): {r['load']['seconds']:.0f} s, get_memory_footprint "
        f"{g(r['load']['footprint_bytes'])}; after k-bit preparation and LoRA "
        f"{g(tr['footprint_after_prepare_bytes'])}",
        f"LoRA: {tr['trainable_parameters'] / 1e6:.1f} M trainable parameters, {g(tr['adapter_bytes'])} weights, "
        f"{g(tr['adapter_bytes'])} gradients, AdamW state {g(tr['adamw_state_bytes'])} here "
        f"(paged 8-bit on a GPU: {g(t4['paged_adamw8bit_bytes'])})",
        f"{tr['steps']} steps of micro-batch {tr['micro_batch_size']} x {tr['max_length']} tokens, gradient "
        f"checkpointing {tr['gradient_checkpointing']}: {tr['seconds_per_step']:.0f} s/step, "
        f"loss {tr['last_loss']:.3f}",
        f"memory: RSS before the steps {g(tr['rss_before_bytes'])}, peak during them {g(tr['peak_rss_bytes'])}; "
        f"live malloc bytes {g(tr['live_before_bytes'])} before, peak {g(tr['peak_live_bytes'])}"
        + (f"; CUDA max allocated {g(tr['cuda_max_allocated_bytes'])}" if tr["cuda_max_allocated_bytes"] else ""),
        f"activations: measured here {g(t4['activations_measured_here_bytes'])}, layer-structure estimate "
        f"{g(est['total'])} (layer inputs {g(est['layer_inputs'])}, one layer {g(est['one_layer'])}, head and loss "
        f"{g(est['head_and_loss'])})",
        f"T4 (16 GB, {g(t4['t4_bytes'])} usable by nvidia-smi): weights {g(t4['weights_bytes'])} + adapters and "
        f"gradients {g(t4['adapters_and_grads_bytes'])} + 8-bit AdamW {g(t4['paged_adamw8bit_bytes'])} + "
        f"activations {g(t4['activations_bytes'])} ({t4['activations_basis']}) + dequantized weight "
        f"{g(t4['dequant_transient_bytes'])} + CUDA context {g(t4['cuda_context_bytes'])} = "
        f"{g(t4['expected_peak_bytes'])}: {verdict}, margin {g(t4['margin_bytes'])}",
        f"rehearsal wall time: {r['seconds'] / 60:.1f} min",
    ]


def _row(line: str, at_commit: str, cpu: str) -> dict[str, str]:
    what, _, measured = line.partition(": ")
    return {"what": what, "measured": measured, "commit": at_commit, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=Path, default=DATA / "frankenstein.txt", help="any text: token ids to train on")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="where the 14.5 GB checkpoint goes (default: temp)")
    ap.add_argument("--record", default=None, help="also keep the figures in docs/results/NAME.json")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer miniature: checks the path in seconds")
    args = ap.parse_args()
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # glibc reads it at start-up: run again with freed buffers handed back, so RSS tracks live memory.
        env = os.environ | {"MALLOC_MMAP_THRESHOLD_": str(4 << 20)}  # 4 MiB, fixed
        os.execve(sys.executable, [sys.executable, "-m", "bench.qlora_memory", *sys.argv[1:]], env)
    if not args.text.is_file():
        raise SystemExit(f"no text at {args.text}: pass --text FILE (any plain-text file) or set SHELLEY_DATA_DIR")
    report = rehearse(args.text.read_text(encoding="utf-8"), steps=args.steps, workdir=args.workdir, tiny=args.tiny)
    lines = summary_lines(report)
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "qlora_memory.json").write_text(json.dumps(report, indent=1))
    if args.record:
        from bench.results import RESULTS as DOCS
        from bench.results import commit, cpu_name

        doc = {
            "kind": "history",
            "name": args.record,
            "title": "Mistral-7B QLoRA memory rehearsal (`python -m bench.qlora_memory`)",
            "note": "Mistral-7B's architecture with random bf16 weights, loaded through shelley's QLoRA path "
            "(the mistral-7b_qlora_gpu preset), 2 optimizer steps at the preset's micro-batch and sequence length.",
            "date": time.strftime("%Y-%m-%d"),
            "rows": [_row(line, commit(), cpu_name()) for line in lines],
            "report": report,
        }
        (DOCS / f"{args.record}.json").write_text(json.dumps(doc, indent=1) + "\n")
        print("wrote", DOCS / f"{args.record}.json")


if __name__ == "__main__":
    main()
