"""Load any model shelley can write with: a run dir, a saved model, a PEFT adapter, a preset or a Hub id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelley.errors import ShelleyError
from shelley.run import Run
from shelley.runtime import tune_allocator


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    source: str  # what was loaded, for messages and reports
    run: Run | None  # the training run it came from, if any (for its corpus, config and reports)


def load_adapter(adapter_dir: Path, *, base: str | None = None, trust_remote_code: bool = False):
    """A PEFT adapter on its base model (read from adapter_config.json unless ``base`` is given), merged for
    fast inference."""
    import torch
    from peft import PeftModel

    from shelley.models.registry import load_causal_lm, resolve

    meta = json.loads((adapter_dir / "adapter_config.json").read_text())
    base_ref = base or meta.get("base_model_name_or_path")
    if not base_ref:
        raise ShelleyError(f"adapter {adapter_dir} does not name its base model; pass --base MODEL")
    base_path = Path(base_ref)
    if base_path.is_absolute() and not base_path.exists():
        raise ShelleyError(
            f"the base model of adapter {adapter_dir} is missing ({base_ref}); "
            "run `shelley models prepare NAME` to rebuild it or pass --base MODEL"
        )
    model = load_causal_lm(
        resolve(base_ref),
        what=f"the base model {base_ref!r} of adapter {adapter_dir}",
        hint="pass --base MODEL",
        dtype=torch.float32,
        trust_remote_code=trust_remote_code,
    )
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def load_model_dir(model_dir: Path, *, base: str | None = None, trust_remote_code: bool = False):
    """A saved full model, or a PEFT adapter loaded onto its base model automatically."""
    import torch

    from shelley.models.registry import load_causal_lm, resolve

    if (model_dir / "adapter_config.json").exists():
        return load_adapter(model_dir, base=base, trust_remote_code=trust_remote_code)
    return load_causal_lm(
        resolve(str(model_dir)),
        what=f"model {str(model_dir)!r}",
        hint="pass a run dir, a model dir saved with save_pretrained, a preset, or a Hub id while online",
        dtype=torch.float32,
        trust_remote_code=trust_remote_code,
    )


def load_for_generation(ref: str | Path, *, base: str | None = None, trust_remote_code: bool = False) -> Loaded:
    from shelley.models.registry import load_tokenizer, resolve

    tune_allocator()
    path = Path(ref)
    run = Run.find(path) if path.is_dir() else None
    model_dir = run.output if run is not None else path if path.is_dir() else None
    target = model_dir if model_dir is not None else Path(resolve(str(ref)))
    model = load_model_dir(target, base=base, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(str(target))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_vocab(model, tokenizer, str(target))
    return Loaded(model, tokenizer, str(target), run)


def check_vocab(model, tokenizer, where: str) -> None:
    """A tokenizer with ids beyond the model's embedding table would index out of range mid-generation."""
    n_embed = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_embed:
        raise ShelleyError(
            f"tokenizer/model vocab mismatch in {where}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"embedding has {n_embed} rows; load the tokenizer saved with this model"
        )


def load_writer(
    ref: str, engine: str, gguf: Path | None, *, base: str | None = None, trust_remote_code: bool = False,
    n_ctx: int | None = None, int8: bool = False,
):  # fmt: skip
    """(Loaded, LlamaCppWriter or None): the model for ``shelley write``. With engine llamacpp the tokenizer and
    the run (for the originality index) load as usual and llama.cpp runs the exported GGUF: ``gguf``, else the
    run's ``export/*-f16.gguf``. ``n_ctx``: the llama.cpp context in tokens (None: the model's own window).
    ``int8``: transformers decodes with int8 weights (``models.decode.int8_weights``)."""
    if engine not in ("transformers", "llamacpp"):
        raise ShelleyError(f"unknown engine {engine!r}; use transformers or llamacpp")
    if engine == "transformers":
        loaded = load_for_generation(ref, base=base, trust_remote_code=trust_remote_code)
        if int8:
            from shelley.models.decode import int8_weights

            int8_weights(loaded.model)
        return loaded, None
    if int8:
        raise ShelleyError(
            "--int8 is for the transformers engine; llama.cpp runs the GGUF's own weights "
            f"(make an 8-bit one with `shelley export {ref} --quant q8_0` and pass it with --gguf)"
        )
    from shelley.generate.llamacpp import LlamaCppWriter, require_llama_cpp
    from shelley.models.registry import load_tokenizer

    require_llama_cpp()
    run = Run.find(ref) if Path(ref).is_dir() else None
    if gguf is None:
        # the fine-tuned model's own export, never export/base-f16.gguf (the scene test's base model)
        found = [p for p in (run.gguf("f16"), run.gguf("q8_0")) if p.exists()] if run is not None else []
        if not found:
            raise ShelleyError(f"--engine llamacpp: no exported GGUF for {ref}; make one with `shelley export {ref}`")
        gguf = found[0]
    tokenizer = load_tokenizer(str(run.output if run is not None else ref), light=True)  # no torch to import
    writer = LlamaCppWriter(gguf, n_ctx=n_ctx)
    return Loaded(None, tokenizer, str(gguf), run), writer
