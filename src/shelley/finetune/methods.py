"""Model set-up per method. full, LoRA and QLoRA differ only in the objects passed to ``from_pretrained``
and ``get_peft_model`` (a ``quantization_config``, a ``peft_config``); the training loop is the same."""

from __future__ import annotations

from typing import Any

from shelley.config import ShelleyConfig
from shelley.errors import ShelleyError


def linear_layer_names(model) -> list[str]:
    """Short names of the model's linear layers (what LoRA can target), e.g. q_proj, c_attn."""
    import torch

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = ()
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear | Conv1D)}
    names.discard("lm_head")  # the output head stays frozen: tied to the embeddings in most small models
    return sorted(names)


def quantization_config(cfg: ShelleyConfig):
    """The 4-bit NF4 config of QLoRA (double quantization, bf16 compute); None for other methods."""
    if cfg.train.method != "qlora":
        return None
    import torch

    if not torch.cuda.is_available():
        raise ShelleyError(
            "method qlora needs a CUDA GPU with bitsandbytes, and none is available; "
            "use --set train.method=lora (or full) or a small preset such as configs/smollm2-135m_lora_cpu.yaml"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ShelleyError("method qlora needs bitsandbytes; pip install 'shelley[gpu]'") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def peft_config(cfg: ShelleyConfig, model) -> Any | None:
    """The LoRA config for lora/qlora, targeting the preset's (or the given) projections; None for full."""
    if cfg.train.method not in ("lora", "qlora"):
        return None
    from peft import LoraConfig

    from shelley.models.registry import PRESETS

    available = linear_layer_names(model)
    targets = cfg.train.lora_target_modules
    if targets is None:
        preset = PRESETS.get(cfg.model.name)
        targets = [t for t in (preset.lora_targets if preset else ()) if t in available] or available
    missing = [t for t in targets if t not in available]
    if missing:
        raise ShelleyError(
            f"LoRA target modules {missing} are not in this model; its linear layers are: {', '.join(available)}"
            " (set train.lora_target_modules)"
        )
    return LoraConfig(
        layers_to_transform=_last_layers(model, cfg.train.lora_layers),
        r=cfg.train.lora_r,
        lora_alpha=cfg.train.lora_alpha,
        lora_dropout=cfg.train.lora_dropout,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _last_layers(model, count: int | None) -> list[int] | None:
    """Indices of the last ``count`` transformer blocks (PEFT's ``layers_to_transform``); None for all."""
    if count is None:
        return None
    total = model.config.get_text_config().num_hidden_layers
    if count > total:
        raise ShelleyError(
            f"train.lora_layers={count} but the model has {total} transformer blocks; "
            f"set train.lora_layers between 1 and {total}, or null to adapt them all"
        )
    return list(range(total - count, total))


def load_tokenizer_for_training(cfg: ShelleyConfig):
    from shelley.models.registry import load_tokenizer

    tok = load_tokenizer(cfg.model.tokenizer or cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # padding only ever happens in generation batches; pads are masked
    return tok


def load_base_model(cfg: ShelleyConfig, *, for_training: bool = True):
    """Load the base model for ``cfg.train.method`` (4-bit for qlora) in fp32 on CPU."""
    import torch

    from shelley.models.registry import load_causal_lm, resolve

    qconfig = quantization_config(cfg) if for_training else None
    target = resolve(cfg.model.name)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code, "revision": cfg.model.revision}
    if qconfig is not None:
        kwargs |= {"quantization_config": qconfig, "dtype": torch.bfloat16, "device_map": {"": 0}}
    else:
        kwargs["dtype"] = torch.float32
    return load_causal_lm(
        target,
        what=f"model {cfg.model.name!r}",
        hint="pass a preset, a directory saved with save_pretrained, or a Hub id while online",
        **kwargs,
    )


def prepare_for_method(model, cfg: ShelleyConfig):
    """Wrap the base model for its method: as is (full), LoRA adapters (lora), k-bit prep + LoRA (qlora)."""
    if cfg.train.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    pconf = peft_config(cfg, model)
    if pconf is not None:
        from peft import get_peft_model

        model = get_peft_model(model, pconf)
    return model
