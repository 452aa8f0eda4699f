"""Model set-up per method. full, LoRA and QLoRA differ only in the objects passed to ``from_pretrained``
and ``get_peft_model`` (a ``quantization_config``, a ``peft_config``); the training loop is the same."""

from __future__ import annotations

import functools
from typing import Any

from shelley.config import ShelleyConfig
from shelley.errors import ShelleyError
from shelley.finetune.autocast import apply_in_autocast_dtype
from shelley.runtime import has_fast_bf16, resolve_precision


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


def qlora_compute_dtype(precision: str):
    """QLoRA's compute dtype, the training precision made concrete (``runtime.resolve_precision``): bf16 where
    the device has bf16 hardware, fp16 on a GPU without it (a T4), fp32 on a CPU without it. bf16 asked of a
    device without bf16 hardware is refused: emulated, it is slow."""
    import torch

    if precision == "bf16" and not has_fast_bf16():
        where = "this GPU" if torch.cuda.is_available() else "this CPU"
        raise ShelleyError(
            f"train.precision=bf16 but {where} has no bf16 hardware; QLoRA would compute in emulated bf16. "
            "Use --set train.precision=auto (fp16 on a GPU, fp32 on a CPU)"
        )
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(precision), torch.float32)


def quantization_config(cfg: ShelleyConfig):
    """The 4-bit NF4 config of QLoRA (double quantization); None for other methods. On CPU it needs
    bitsandbytes' CPU backend (bitsandbytes 0.49 or later): a probe quantizes one small tensor first."""
    if cfg.train.method != "qlora":
        return None
    import torch

    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        raise ShelleyError(
            "method qlora needs bitsandbytes: pip install 'shelley[qlora]' (its CPU backend runs small models; "
            "Mistral-7B wants a GPU), or use --set train.method=lora"
        ) from None
    if not torch.cuda.is_available():
        try:
            bnbf.quantize_4bit(torch.zeros(64, 64), quant_type="nf4")
        except Exception:  # no CPU kernel in this bitsandbytes build: errors differ by version
            raise ShelleyError(
                "this bitsandbytes has no CPU backend and there is no CUDA GPU; pip install 'bitsandbytes>=0.49' "
                "or use --set train.method=lora"
            ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=qlora_compute_dtype(cfg.train.precision),
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
    config = LoraConfig(
        layers_to_transform=_last_layers(model, cfg.train.lora_layers),
        r=cfg.train.lora_r,
        lora_alpha=cfg.train.lora_alpha,
        lora_dropout=cfg.train.lora_dropout,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # Not under train.compile: dynamo recompiles the fused layer's Python checks per layer until it hits its
    # recompile limit and falls back to eager, while PEFT's own layers compile into one graph (measured).
    if cfg.train.method == "lora" and cfg.train.fused_lora and not cfg.train.compile:
        import torch

        # PEFT's documented hook for custom LoRA layers. Only plain nn.Linear under method lora: qlora's
        # bitsandbytes layers subclass nn.Linear too and must keep PEFT's own classes.
        config._register_custom_module({torch.nn.Linear: fused_lora_linear_class()})
    return config


@functools.cache  # one Function class, built on first use (torch is imported lazily)
def _lora_linear_function():
    import torch

    class LoraLinear(torch.autograd.Function):
        """``x W^T (+ b) + s (x A^T) B^T`` with a hand-written backward.

        Why not autograd over the ops: it would keep three tensors of the layer's output size per call (the base
        output, the low-rank product, the sum) and in backward add the base's and the adapter's input gradients
        in a fresh tensor. Here forward writes one output (the update goes in place into the base GEMM's result,
        the scale is BLAS's alpha), and backward accumulates the adapter's input gradient into the base's with
        one in-place ``addmm_``. Each fresh tensor of this size is a pass over cold memory: on 2 CPU cores those
        passes, not the FLOPs, were what the extra ops cost (measured: 5-8% of a LoRA step).
        """

        @staticmethod
        def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):
            # x (N, in), weight (out, in), bias (out,) | None, lora_a (r, in), lora_b (out, r)
            out = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())  # (N, out)
            xa = torch.mm(x, lora_a.t())  # (N, r)
            out.addmm_(xa, lora_b.t(), alpha=scaling)  # out += s * xa @ B^T, in place
            ctx.save_for_backward(x, weight, lora_a, lora_b, xa)
            ctx.scaling = scaling
            return out

        @staticmethod
        def backward(ctx, grad_out):
            # grad_out (N, out)
            x, weight, lora_a, lora_b, xa = ctx.saved_tensors
            need_x, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
            grad_x = grad_w = grad_bias = grad_a = grad_b = None
            grad_xa = torch.mm(grad_out, lora_b).mul_(ctx.scaling)  # (N, r)
            if need_x:
                grad_x = torch.mm(grad_out, weight).addmm_(grad_xa, lora_a)  # (N, in): base + adapter, one tensor
            if need_w:  # the base weight trains only if someone unfroze it
                grad_w = torch.mm(grad_out.t(), x)  # (out, in)
            if need_bias:
                grad_bias = grad_out.sum(dim=0)
            if need_a:
                grad_a = torch.mm(grad_xa.t(), x)  # (r, in)
            if need_b:
                # (xa^T dY)^T, not dY^T xa: the same product, ~25% faster in MKL for this skinny shape
                grad_b = torch.mm(xa.t(), grad_out).mul_(ctx.scaling).t()  # (out, r)
            return grad_x, grad_w, grad_bias, grad_a, grad_b, None

    return LoraLinear


@functools.cache
def fused_lora_linear_class():
    """PEFT's LoRA ``Linear`` whose training forward is one autograd Function (``_lora_linear_function``).

    PEFT computes ``result + lora_B(lora_A(x)) * scaling`` as separate autograd ops: the (tokens x out)
    low-rank product is written, multiplied by the scale into a second tensor and added into a third, and
    backward adds the base's and the adapter's input gradients in yet another. The Function writes one output
    and one input gradient. Same weights, same names, same merge/save: a saved adapter loads with plain PEFT.
    Anything but the plain case (several or disabled adapters, dropout, DoRA and other variants, a LoRA bias,
    mixed dtypes outside autocast, a base layer whose forward accelerate hooked) takes PEFT's forward. Under
    autocast the inputs are cast to the autocast dtype before the Function, as ``nn.Linear`` would cast them, so
    autograd casts the adapters' gradients back to their fp32 weights.
    """
    import torch
    from peft.tuners.lora.layer import Linear

    class FusedLoraLinear(Linear):
        def forward(self, x, *args, **kwargs):
            active = self.active_adapters
            name = active[0] if len(active) == 1 else None
            base = self.get_base_layer()
            autocast = torch.is_autocast_enabled(x.device.type)  # then the Function gets everything cast alike
            plain = (
                name is not None
                and not (args or kwargs or self.disable_adapters or self.merged)
                and name in self.lora_A
                and name not in self.lora_variant
                and isinstance(self.lora_dropout[name], torch.nn.Identity)
                and self.lora_B[name].bias is None
                and (
                    autocast
                    or x.dtype == self.lora_A[name].weight.dtype == self.lora_B[name].weight.dtype == base.weight.dtype
                )
                # accelerate's hooks (offload, device maps) replace the instance's forward and only run when
                # the base layer is called: such a layer takes PEFT's path (add_hook_to_module's documented way)
                and "forward" not in vars(base)
            )
            if not plain:
                return super().forward(x, *args, **kwargs)
            out = apply_in_autocast_dtype(
                _lora_linear_function(),
                x.reshape(-1, x.shape[-1]),  # (N, in)
                base.weight,
                base.bias,
                self.lora_A[name].weight,
                self.lora_B[name].weight,
                self.scaling[name],
            )  # (N, out)
            return out.view(*x.shape[:-1], out.shape[-1])

    return FusedLoraLinear


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
    _check_not_quantized(target, cfg)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code, "revision": cfg.model.revision}
    if qconfig is not None:
        device = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
        kwargs |= {"quantization_config": qconfig, "dtype": qconfig.bnb_4bit_compute_dtype, "device_map": device}
    else:
        kwargs["dtype"] = torch.float32
    model = load_causal_lm(
        target,
        what=f"model {cfg.model.name!r}",
        hint="pass a preset, a directory saved with save_pretrained, or a Hub id while online",
        **kwargs,
    )
    if qconfig is not None:
        check_4bit(model, cfg.model.name)
        _keep_4bit_layout(model)
    return model


def _keep_4bit_layout(model) -> None:
    """bitsandbytes, on a CPU with AVX512-BF16, repacks a 4-bit layer in place for its bf16 inference kernel at the
    first forward in eval mode without gradients, rounding the block scales to bf16 on the way. In training that
    forward is a validation pass: the frozen base the next steps train against would change under them (and a
    resumed run, which has not validated yet, would train against the other one), and those steps would run
    through the repacked kernel, which has no backward (torch warns, and no gradient flows back through the frozen
    base path to the adapters below). A model trained keeps the layout it was loaded with."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def has_4bit_layers(model) -> bool:
    """Whether bitsandbytes turned any of the model's layers to 4 bits."""
    return any(type(m).__name__ == "Linear4bit" for m in model.modules())


def check_4bit(model, name: str) -> None:
    """QLoRA needs layers bitsandbytes turned to 4 bits; a model whose layers it cannot quantize would train
    as a plain LoRA while claiming to be QLoRA."""
    if not has_4bit_layers(model):
        raise ShelleyError(
            f"model {name!r} has no linear layers bitsandbytes can quantize to 4 bits; use --set train.method=lora"
        )


def _check_not_quantized(target: str, cfg: ShelleyConfig) -> None:
    """A checkpoint saved in 4 or 8 bits trains only as QLoRA: full and LoRA need full-precision weights."""
    import json
    from pathlib import Path

    config = Path(target) / "config.json"
    if (
        cfg.train.method in ("full", "lora")
        and config.is_file()
        and "quantization_config" in json.loads(config.read_text())
    ):
        raise ShelleyError(
            f"model {cfg.model.name!r} is saved quantized; --method {cfg.train.method} needs full-precision weights: "
            "train it with --method qlora, or point model.name at the full-precision base"
        )


def training_attention(cfg: ShelleyConfig, device_type: str) -> str | None:
    """The attention implementation the training forward should use, or None to keep the model's own.

    torch's SDPA on a CPU runs a flash kernel whose bf16 backward is slow at fine-tuning lengths: eager
    attention's two matmuls and fp32 softmax take less than half its time there, while in fp32 SDPA is the
    faster (docs/results.md). So ``auto`` takes eager exactly there."""

    choice = cfg.train.attention
    if choice != "auto":
        return choice
    if cfg.train.method != "scratch" and device_type == "cpu" and resolve_precision(cfg.train.precision) == "bf16":
        return "eager"
    return None


def set_attention(model, implementation: str | None) -> str | None:
    """Switch a Hugging Face model to ``implementation``; returns the kernel to switch back to: the model's own,
    the one ``from_pretrained`` picks for it (sdpa where the model supports it). None: nothing changed, as for
    models without ``set_attn_implementation`` (the scratch GPT). Public transformers API only: the kernel a model
    runs is not readable without a private config attribute, so shelley restores the default rather than read it."""
    if implementation is None or not hasattr(model, "set_attn_implementation"):
        return None
    own = model.get_correct_attn_implementation(None)
    model.set_attn_implementation(implementation)
    return own


def prepare_for_method(model, cfg: ShelleyConfig):
    """Wrap the base model for its method: as is (full), LoRA adapters (lora), k-bit prep + LoRA (qlora).
    ``model`` may come from load_base_model or from the caller (train(model=...))."""
    # Non-reentrant checkpointing: torch's recommended variant, which needs no input that requires grad (the
    # reentrant one does, and with frozen embeddings only PEFT's input hook gives it one).
    kwargs = {"use_reentrant": False}
    if cfg.train.method == "qlora":
        from peft import prepare_model_for_kbit_training

        # load_base_model's guards again, for a model the caller loaded. Both places are needed: `shelley run`
        # scores the base (an eval-mode forward) before train(), so the layout must be kept from the load on.
        if not has_4bit_layers(model):
            raise ShelleyError(
                "the model given to train() has no 4-bit layers: load it with "
                "quantization_config=BitsAndBytesConfig(load_in_4bit=True), or use train.method=lora"
            )
        _keep_4bit_layout(model)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing, gradient_checkpointing_kwargs=kwargs
        )
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    pconf = peft_config(cfg, model)
    if pconf is not None:
        from peft import get_peft_model

        model = get_peft_model(model, pconf)
    return model
