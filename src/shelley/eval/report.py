"""``shelley eval RUN_DIR``: base vs fine-tuned perplexity on the same validation tokens, side-by-side
generations with the same seeds and settings, timing and hyperparameters -> eval.json and eval.md."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from shelley.config import ShelleyConfig
from shelley.errors import ShelleyError


def load_run(run_dir: Path) -> tuple[ShelleyConfig, Path]:
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise ShelleyError(
            f"{run_dir} is not a shelley run dir (no config.yaml); pass the --run-dir of `shelley train`"
        )
    cfg = ShelleyConfig.model_validate(yaml.safe_load(cfg_path.read_text()))
    for name in ("model", "adapter"):
        if (run_dir / name / "config.json").exists() or (run_dir / name / "adapter_config.json").exists():
            return cfg, run_dir / name
    raise ShelleyError(f"{run_dir} has no trained model yet (no model/ or adapter/); finish or --resume the training")


def load_finetuned(path: Path, cfg: ShelleyConfig):
    """A full model directory, or a PEFT adapter loaded onto its base model automatically."""
    import torch
    from transformers import AutoModelForCausalLM

    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        from shelley.finetune.methods import load_base_model

        base = load_base_model(cfg, for_training=False)
        return PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def validation_stream(run_dir: Path) -> np.ndarray:
    cached = sorted((run_dir / "cache").glob("validation-*.npy"))
    if not cached:
        raise ShelleyError(f"{run_dir} has no cached validation tokens; re-run `shelley train`")
    return np.load(cached[-1], mmap_mode="r")


def score_model(model, tokenizer, stream: np.ndarray, cfg: ShelleyConfig) -> dict[str, Any]:
    """Perplexity on ``stream`` and generations for the eval prompts (fixed seed), each timed."""
    from shelley.eval.perplexity import perplexity
    from shelley.generate import generate_texts

    t0 = time.perf_counter()
    ppl = perplexity(
        model,
        stream,
        max_length=cfg.model.max_length,
        stride=cfg.eval.stride,
        batch_size=cfg.train.micro_batch_size,
        max_tokens=cfg.eval.max_eval_tokens,
    )
    ppl["seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    texts = generate_texts(model, tokenizer, cfg.eval.prompts, cfg.generation)  # same seed for every model
    return {"perplexity": ppl, "generations": texts, "generation_seconds": round(time.perf_counter() - t0, 2)}


def combine(
    cfg: ShelleyConfig, base: dict[str, Any], tuned: dict[str, Any], training: dict[str, Any]
) -> dict[str, Any]:
    n = cfg.generation.num_samples
    ppl = {"base": base["perplexity"], "finetuned": tuned["perplexity"]}
    ppl["ratio"] = ppl["finetuned"]["perplexity"] / ppl["base"]["perplexity"]
    return {
        "model": cfg.model.name,
        "method": cfg.train.method,
        "perplexity": ppl,
        "generations": [
            {
                "prompt": p,
                "base": base["generations"][i * n : (i + 1) * n],
                "finetuned": tuned["generations"][i * n : (i + 1) * n],
            }
            for i, p in enumerate(cfg.eval.prompts)
        ],
        "generation_seconds": {"base": base["generation_seconds"], "finetuned": tuned["generation_seconds"]},
        "training": training,
        "hyperparameters": cfg.model_dump(mode="json")["train"] | {"max_length": cfg.model.max_length},
    }


def evaluate_run(run_dir: Path) -> dict[str, Any]:
    """Evaluate a finished ``shelley train`` run dir: base and fine-tuned on the run's validation tokens."""
    from shelley.finetune.methods import load_base_model, load_tokenizer_for_training

    run_dir = Path(run_dir)
    cfg, out = load_run(run_dir)
    stream = validation_stream(run_dir)
    tokenizer = load_tokenizer_for_training(cfg)
    base = score_model(load_base_model(cfg, for_training=False), tokenizer, stream, cfg)
    tuned = score_model(load_finetuned(out, cfg), tokenizer, stream, cfg)
    summary = run_dir / "train_summary.json"
    training = json.loads(summary.read_text()) if summary.exists() else {}
    return combine(cfg, base, tuned, training) | {"run_dir": str(run_dir)}


def render_eval_md(r: dict[str, Any]) -> str:
    p = r["perplexity"]
    tr = r.get("training", {})
    lines = [
        f"# Evaluation: {r['model']} ({r['method']})",
        "",
        "| model | validation perplexity | tokens | seconds |",
        "|---|---|---|---|",
        f"| base | {p['base']['perplexity']:.2f} | {p['base']['tokens']} | {p['base']['seconds']} |",
        f"| fine-tuned | {p['finetuned']['perplexity']:.2f} | {p['finetuned']['tokens']} "
        f"| {p['finetuned']['seconds']} |",
        "",
        f"Fine-tuned / base perplexity: **{p['ratio']:.3f}** (same validation tokens, same windows).",
        "",
    ]
    if tr:
        lines += [
            f"Training: {tr.get('steps')} steps in {tr.get('train_seconds', 0):.0f} s, "
            f"{tr.get('tokens_per_second', 0):.0f} tokens/s, {tr.get('tokens_seen')} tokens seen"
            + (" (stopped by the time budget)" if tr.get("stopped_early") else ""),
            "",
        ]
    gs = r["generation_seconds"]
    lines += [f"Generation wall time: base {gs['base']} s, fine-tuned {gs['finetuned']} s.", "", "## Generations", ""]
    for g in r["generations"]:
        lines += [f"### {g['prompt']}", "", "| base | fine-tuned |", "|---|---|"]
        for b, f in zip(g["base"], g["finetuned"], strict=True):
            cell = lambda t: " ".join(t.split()).replace("|", "\\|")  # noqa: E731
            lines.append(f"| {cell(b)} | {cell(f)} |")
        lines.append("")
    lines += ["## Hyperparameters", "", "```yaml", yaml.safe_dump(r["hyperparameters"], sort_keys=False).strip(), "```"]
    return "\n".join(lines) + "\n"


def write_eval(run_dir: Path, results: dict[str, Any]) -> None:
    from shelley.io import atomic_write_text, write_json

    write_json(Path(run_dir) / "eval.json", results)
    atomic_write_text(Path(run_dir) / "eval.md", render_eval_md(results))
