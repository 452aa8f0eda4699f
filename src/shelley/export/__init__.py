"""``shelley export RUN``: the trained model where people run local models.

- ``--format gguf``: one GGUF file (f16, q8_0 or q4_k_m) with the tokenizer, chat template, the eval's sampling
  defaults and the run's provenance in its metadata (``gguf.write_gguf``).
- ``--format ollama``: a folder with the GGUF and a ``Modelfile`` (``ollama create NAME -f Modelfile``).
- ``--format lmstudio``: the ``publisher/model/file.gguf`` tree LM Studio's model folder expects.

A LoRA run is merged into its base first. Everything is written to a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from shelley.errors import ShelleyError
from shelley.export.gguf import ARCHITECTURES, QUANTS, check_export, write_gguf
from shelley.io import check_output_dir, check_output_file
from shelley.run import Run

FORMATS = ("gguf", "ollama", "lmstudio")
__all__ = ["ARCHITECTURES", "FORMATS", "QUANTS", "export_run", "modelfile", "provenance"]


def provenance(run: Run, cfg) -> dict[str, Any]:
    """What the GGUF metadata says about where the model came from and how it measured."""
    from shelley import __version__

    meta: dict[str, Any] = {
        "name": run.root.resolve().name,
        "version": __version__,
        "base_model": cfg.model.name if cfg.train.method != "scratch" else "none (trained from scratch)",
        "method": cfg.train.method,
        "corpus.author": cfg.data.author or "",
        "corpus.title": cfg.data.title or "",
    }
    if run.results_file() is not None:
        ev = run.eval_result()
        meta |= {
            "eval.perplexity_base": ev.perplexity.base.perplexity,
            "eval.perplexity": ev.perplexity.finetuned.perplexity,
            "eval.validation_tokens": ev.perplexity.finetuned.tokens,
        }
        if ev.attribution:
            meta["eval.attribution_share"] = ev.attribution.results["finetuned"]["target_share"]
    return meta


def modelfile(gguf_name: str, gen, stops: list[str]) -> str:
    """An Ollama Modelfile: the raw prompt is continued (shelley's models write on from your text), with the
    sampling settings the eval used and the tokenizer's end-of-text as a stop."""
    lines = [f"FROM ./{gguf_name}", 'TEMPLATE """{{ .Prompt }}"""']
    lines += [
        f"PARAMETER temperature {gen.temperature}",
        f"PARAMETER top_p {gen.top_p}",
        f"PARAMETER top_k {gen.top_k}",
        f"PARAMETER repeat_penalty {gen.repetition_penalty}",
        f"PARAMETER num_predict {gen.max_new_tokens}",
        f"PARAMETER seed {gen.seed}",
    ]
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    return "\n".join(lines) + "\n"


def _quantize_with_llamacpp(src: Path, dst: Path, quant: str) -> None:
    """Q4_K_M by llama.cpp's own quantizer, from the f16 file."""
    try:
        import llama_cpp
    except ImportError:
        raise ShelleyError(
            f"--quant {quant} is made by llama.cpp: pip install 'shelley[llamacpp]' (or export f16 / q8_0)"
        ) from None
    import ctypes

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise ShelleyError(f"llama.cpp could not quantize {src.name} to {quant}")


def export_run(
    run: Run, fmt: str, *, quant: str = "f16", out: Path | None = None, overwrite: bool = False,
    trust_remote_code: bool = False,
) -> Path:  # fmt: skip
    """Export the run's model; returns the file (gguf) or folder (ollama, lmstudio) written, by default under
    RUN/export/. Every check runs before the model is loaded; nothing is left half-written."""
    from shelley.generate.load import load_for_generation

    if fmt not in FORMATS:
        raise ShelleyError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    check_export(json.loads(_config_json(run).read_text()).get("model_type", "?"), quant)
    name = run.root.resolve().name
    file_name = run.gguf(quant).name
    target = Path(out) if out else (run.gguf(quant) if fmt == "gguf" else run.export_dir / fmt)
    (check_output_file if fmt == "gguf" else check_output_dir)(target, overwrite=overwrite)
    cfg = run.config()
    loaded = load_for_generation(str(run.root), trust_remote_code=trust_remote_code)
    meta = provenance(run, cfg) | {"quant": quant}
    vocab = base_vocab(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        gguf_path = staging / file_name
        if quant == "q4_k_m":
            write_gguf(
                loaded.model, loaded.tokenizer, staging / "f16.gguf", quant="f16", metadata=meta, vocab_file=vocab
            )
            _quantize_with_llamacpp(staging / "f16.gguf", gguf_path, quant)
            (staging / "f16.gguf").unlink()
        else:
            write_gguf(loaded.model, loaded.tokenizer, gguf_path, quant=quant, metadata=meta, vocab_file=vocab)
        if fmt == "gguf":
            gguf_path.replace(target)
            return target
        if fmt == "ollama":
            stops = sorted({t for t in (loaded.tokenizer.eos_token, *cfg.generation.stop) if t})
            (staging / "Modelfile").write_text(modelfile(file_name, cfg.generation, stops), encoding="utf-8")
        else:  # LM Studio's models folder: <publisher>/<model>/<file>.gguf
            tree = staging / "shelley" / f"{name}-GGUF"
            tree.mkdir(parents=True)
            gguf_path.replace(tree / file_name)
        if target.exists():
            shutil.rmtree(target)
        staging.replace(target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def base_vocab(cfg) -> Path | None:
    """The GGUF vocabulary of the run's base model (``models.registry.vocab_gguf``); None for a scratch GPT."""
    from shelley.models.registry import vocab_gguf

    return vocab_gguf(cfg.model.name) if cfg.train.method != "scratch" else None


def _config_json(run: Run) -> Path:
    """config.json of the model the run saved (a full model, or the base of an adapter)."""
    out = run.output
    if (out / "config.json").exists():
        return out / "config.json"
    base = json.loads((out / "adapter_config.json").read_text()).get("base_model_name_or_path", "")
    from shelley.models.registry import resolve

    return Path(resolve(base)) / "config.json"


def scene_engines(run: Run, *, quant: str = "f16", on_note=None):
    """A factory ``(who, model, tokenizer, gen) -> token engine`` that writes the scene test's scenes with
    llama.cpp: the fine-tuned model from the run's ``quant`` export (made now if missing), the base model from
    RUN/export/base-QUANT.gguf, exported from the loaded base once. ``shelley eval --scenes --engine llamacpp``.
    ``quant``: f16, or q8_0 (half the bytes a token reads: Gemma's 262k-row output head is most of them)."""
    from shelley.generate.llamacpp import LlamaCppWriter, require_llama_cpp

    if quant not in ("f16", "q8_0"):
        raise ShelleyError(f"scenes are written from an f16 or q8_0 export, not {quant!r}; pass --quant f16 or q8_0")
    require_llama_cpp()
    note = on_note or (lambda _m: None)

    def engine(who: str, model, tokenizer, gen):
        if who == "finetuned":
            if not run.gguf(quant).exists():
                note(f"exporting the fine-tuned model for llama.cpp ({quant})")
                export_run(run, "gguf", quant=quant)
            return LlamaCppWriter(run.gguf(quant)).scene_engine(gen)
        path = run.base_gguf(quant)
        if not path.exists():
            note(f"exporting the base model for llama.cpp ({quant})")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            write_gguf(
                model, tokenizer, tmp, quant=quant, metadata={"role": "base"}, vocab_file=base_vocab(run.config())
            )
            tmp.replace(path)
        return LlamaCppWriter(path).scene_engine(gen)

    return engine
