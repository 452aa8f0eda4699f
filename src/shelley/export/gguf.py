"""``shelley export``: a trained model as a GGUF file, the format llama.cpp, Ollama and LM Studio run.

The file is written with the ``gguf`` package (llama.cpp's own Python writer): its tensor-name maps, its Q8_0
quantizer, its vocabulary helpers. shelley only says which Hugging Face weight goes where and how it is laid
out: llama.cpp's LLAMA graph applies rotary embeddings to interleaved pairs where Hugging Face rotates halves,
so q and k are permuted (what llama.cpp's converter does), and GPT-2's Conv1D weights are stored transposed.
Gemma 3 keeps its halves (llama.cpp's GEMMA3 graph rotates as Hugging Face does), but its RMSNorms scale by
``1 + weight`` where llama.cpp's scale by the stored weight, so every norm is written plus one; its sentencepiece
vocabulary is copied from the GGUF the base model came from (``models.registry.vocab_gguf``).
Q4_K_M is made from the f16 file by llama.cpp itself (``llama-cpp-python``), the reference quantizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from shelley.errors import ShelleyError
from shelley.models.bos import bos_prefix

QUANTS = ("f16", "q8_0", "q4_k_m")
# Hugging Face model_type -> GGUF arch
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "gpt2": "gpt2", "gemma3_text": "gemma3"}


def check_export(model_type: str, quant: str) -> None:
    """Refuse what the writer lacks before any weight is loaded."""
    if model_type not in ARCHITECTURES:
        raise ShelleyError(
            f"cannot export a {model_type!r} model to GGUF; supported: {', '.join(sorted(ARCHITECTURES))} "
            "(SmolLM2, Mistral, Llama, Gemma 3, DistilGPT-2, GPT-2, the scratch GPT)"
        )
    if quant not in QUANTS:
        raise ShelleyError(f"unknown quant type {quant!r}; use one of {', '.join(QUANTS)}")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotate-half q/k rows -> llama.cpp's interleaved pairs (its converter's ``permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model, arch_name: str):
    """(GGUF name, float32 array) for every weight, in llama.cpp's layout."""
    import gguf
    import torch
    from transformers.pytorch_utils import Conv1D

    cfg = model.config
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "gpt2": gguf.MODEL_ARCH.GPT2, "gemma3": gguf.MODEL_ARCH.GEMMA3}[arch_name]
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    conv1d = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, Conv1D)}
    state = model.state_dict()
    tied = getattr(cfg, "tie_word_embeddings", False)
    for key, tensor in state.items():
        if key == "lm_head.weight" and tied:
            continue  # llama.cpp reads the embeddings when there is no output tensor (LLAMA), see below (GPT-2)
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            if key.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
                continue  # buffers, not weights
            raise ShelleyError(f"no GGUF name for weight {key!r} of this {cfg.model_type} model; it cannot be exported")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if key in conv1d:
            data = data.T  # Conv1D keeps (in, out); ggml wants (out, in)
        if arch_name == "llama" and name.endswith("attn_q.weight"):
            data = _permute(data, cfg.num_attention_heads)
        elif arch_name == "llama" and name.endswith("attn_k.weight"):
            data = _permute(data, cfg.num_key_value_heads)
        elif arch_name == "gemma3" and name.endswith("norm.weight"):
            data = data + 1.0  # Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's by the weight
        yield name, np.ascontiguousarray(data)
        if arch_name == "gpt2" and name == "token_embd.weight":
            yield "output.weight", np.ascontiguousarray(data)  # GPT-2 in llama.cpp needs its (tied) head


def _hyperparameters(w, cfg, arch_name: str) -> None:
    if arch_name == "gpt2":
        w.add_context_length(cfg.n_positions)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
        return
    if arch_name == "gemma3":
        _gemma3_hyperparameters(w, cfg)
        return
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ShelleyError(f"rope scaling {rope.get('rope_type')!r} is not exported; supported: plain RoPE")
    heads = cfg.num_attention_heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)


def _gemma3_hyperparameters(w, cfg) -> None:
    """Gemma 3 as llama.cpp's GEMMA3 reads it. llama.cpp fixes what the file does not say: every sixth layer
    global, the others sliding with RoPE base 10,000, and attention scaled by 1/sqrt(head_dim); a model whose
    config says otherwise would run differently there, so it is refused."""
    types = list(getattr(cfg, "layer_types", None) or [])
    expected = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(cfg.num_hidden_layers)]
    rope = getattr(cfg, "rope_parameters", None) or {}
    local = rope.get("sliding_attention", {}).get("rope_theta", getattr(cfg, "rope_local_base_freq", 10000.0))
    full = rope.get("full_attention", rope).get("rope_theta", getattr(cfg, "rope_theta", 1_000_000.0))
    scaled = rope.get("full_attention", rope).get("rope_type", "default") != "default"
    capped = getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "attn_logit_softcapping", None)
    odd = (types and types != expected) or float(local) != 10000.0 or cfg.query_pre_attn_scalar != cfg.head_dim
    if odd or scaled or capped:
        raise ShelleyError(
            "this Gemma 3 config (layer pattern, RoPE, attention scale or soft-capping) differs from what "
            "llama.cpp assumes for gemma3; it cannot be exported"
        )
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(full))
    w.add_sliding_window(cfg.sliding_window)


def _pre_tokenizer(spec: dict[str, Any] | None) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization: GPT-2's byte-level regex, or SmolLM's (digits
    split one by one first)."""
    kinds = [p.get("type") for p in (spec or {}).get("pretokenizers", [spec or {}])]
    if kinds == ["ByteLevel"]:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and spec["pretokenizers"][0].get("individual_digits"):
        return "smollm"
    raise ShelleyError(
        f"the tokenizer's pre-tokenizer {kinds} has no llama.cpp equivalent shelley knows; supported: "
        "GPT-2 byte-level BPE (DistilGPT-2, GPT-2, the scratch GPT) and SmolLM2's"
    )


def _tokenizer(w, tokenizer, n_vocab: int, vocab_file: Path | None = None) -> None:
    """The vocabulary: a sentencepiece one copied from the model's own GGUF (``vocab_file``), a byte-level BPE
    one written from the tokenizer; then the special tokens as shelley uses them (its end-of-text may differ
    from the original file's)."""
    if vocab_file is not None:
        _copy_vocabulary(w, vocab_file, n_vocab)
    else:
        _byte_level_vocabulary(w, tokenizer, n_vocab)
    for kind, tid in (
        ("bos", tokenizer.bos_token_id),
        ("eos", tokenizer.eos_token_id),
        ("pad", tokenizer.pad_token_id),
    ):
        if tid is not None:
            getattr(w, f"add_{kind}_token_id")(tid)
    # llama.cpp adds BOS to a text prompt exactly when the model expects one (models.bos), as shelley does.
    w.add_add_bos_token(bool(bos_prefix(tokenizer)))
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        w.add_chat_template(tokenizer.chat_template)


# The keys that spell a vocabulary; special token ids and the BOS flag are written from shelley's tokenizer.
VOCABULARY_KEYS = (
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.add_space_prefix",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.precompiled_charsmap",
)  # fmt: skip


def _copy_vocabulary(w, vocab_file: Path, n_vocab: int) -> None:
    import gguf

    fields = gguf.GGUFReader(str(vocab_file)).fields
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != n_vocab:
        found = len(tokens.data) if tokens is not None else 0
        raise ShelleyError(
            f"the vocabulary in {vocab_file.name} has {found} tokens but the model {n_vocab}; export needs the GGUF "
            "the base model came from"
        )
    for key in VOCABULARY_KEYS:
        if key in fields:
            field = fields[key]
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, field.contents(), field.types[0], sub_type=sub)


def _byte_level_vocabulary(w, tokenizer, n_vocab: int) -> None:
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise ShelleyError(f"only byte-level BPE tokenizers are exported, not {spec['model']['type']}")
    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(n_vocab):
        tok = vocab.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(tok)
            kind = gguf.TokenType.CONTROL if tok in special else gguf.TokenType.USER_DEFINED if tok in added else None
            types.append(kind or gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_tokenizer(spec.get("pre_tokenizer")))
    w.add_token_list(tokens)
    w.add_token_types(types)
    merges = spec["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])


def write_gguf(
    model, tokenizer, path: Path, *, quant: str, metadata: dict[str, Any], progress: bool = False,
    vocab_file: Path | None = None,
) -> Path:  # fmt: skip
    """Write ``model`` and ``tokenizer`` to ``path`` as f16 or q8_0 GGUF, with ``metadata`` (strings and
    numbers under ``shelley.*``: provenance and eval figures). ``vocab_file``: the GGUF whose vocabulary to copy
    (needed for Gemma's sentencepiece vocabulary; see ``models.registry.vocab_gguf``)."""
    import gguf

    cfg = model.config
    arch_name = ARCHITECTURES[cfg.model_type]
    w = gguf.GGUFWriter(str(path), arch_name)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(str(metadata.get("name", "shelley model")))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _hyperparameters(w, cfg, arch_name)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    w.add_vocab_size(n_vocab)
    if arch_name == "gemma3" and vocab_file is None:
        raise ShelleyError(
            "exporting Gemma 3 needs its sentencepiece vocabulary from the GGUF it came from: use the gemma3-270m "
            "preset or a model brought in with `shelley models import-gguf`"
        )
    _tokenizer(w, tokenizer, n_vocab, vocab_file if arch_name == "gemma3" else None)
    for key, value in metadata.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            w.add_float32(f"shelley.{key}", float(value))
        else:
            w.add_string(f"shelley.{key}", str(value))
    for name, data in _tensors(model, arch_name):
        if data.ndim == 1:
            w.add_tensor(name, data)  # norms and biases stay f32, as llama.cpp's converter keeps them
        elif quant == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
            w.add_tensor(
                name,
                gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        else:
            w.add_tensor(name, data.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=progress)
    w.close()
    return path
