"""One stream of decoding for Llama-architecture models on CPU: the same function as transformers' forward, in
fewer operations.

transformers' forward serves every model, cache and device. For one decoded token of SmolLM2-135M on 2 cores it
spends about as long between its matrix products (module calls, a key/value cache grown by concatenation,
casts) as in them: ~65 ms a token, ~32 of them in the products. This decoder reads the model's own weights once
and then, per layer and token, runs one product for q/k/v together, one for the attention output, one for gate
and up together and one for down, with keys and values written into a cache allocated ahead. The numbers are
the model's (``tests/test_llama_decode.py`` holds them to transformers' logits).

Weights stay what the model holds: float ``nn.Linear`` weights, or the int8 rows and scales of
``models.decode.Int8Linear`` (``--int8``), whose product reads a quarter of the bytes. On 2 cores the int8 step is
about twice as fast as transformers' float one; see ``docs/results`` (decode speed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shelley.models.decode import Int8Linear

ARCHITECTURES = ("llama", "mistral")  # Mistral without a sliding window is Llama's function
PREFILL_DEQUANT = 8  # int8 products for more rows than this run on weights widened to bf16: int8pack_mm goes row by row


def unsupported(model) -> str | None:
    """Why ``LlamaDecoder`` cannot run ``model`` (None when it can)."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in ARCHITECTURES:
        return f"{kind or type(model).__name__} is not a Llama-architecture model"
    checks = {
        "sliding-window attention": getattr(cfg, "sliding_window", None),
        "an activation other than SiLU": getattr(cfg, "hidden_act", "silu") != "silu",
        "tensor-parallel pretraining slices": getattr(cfg, "pretraining_tp", 1) != 1,
        "biases in attention or MLP": getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False),
        "no rotary embedding module": not hasattr(getattr(model, "model", None), "rotary_emb"),
        "weights off the CPU": any(p.device.type != "cpu" for p in model.parameters()),
        "too little free memory for a fused copy of its weights": not _fits(model),
    }
    reasons = [what for what, hit in checks.items() if hit]
    return f"{kind} with {reasons[0]}" if reasons else None


def _fits(model) -> bool:
    """The fused products copy most of the weights: take them only where the copy leaves plenty of memory."""
    import psutil

    size = sum(p.numel() * p.element_size() for p in model.parameters())
    size += sum(b.numel() * b.element_size() for b in model.buffers())
    return 4 * size < psutil.virtual_memory().available


class _Product:
    """Several linear layers of one input as one product: their weights stacked, float or int8 with row scales."""

    def __init__(self, layers: list) -> None:
        def stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
            return tensors[0] if len(tensors) == 1 else torch.cat(tensors)  # one layer: its own tensor, no copy

        if all(isinstance(m, Int8Linear) for m in layers):
            self.weight = stacked([m.weight for m in layers])
            self.scale = stacked([m.scale for m in layers])
        elif all(isinstance(m, torch.nn.Linear) and m.bias is None for m in layers):
            self.weight, self.scale = stacked([m.weight.detach() for m in layers]), None
        else:
            raise TypeError(f"cannot fuse {[type(m).__name__ for m in layers]}")
        self.sizes = [m.out_features for m in layers]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The product in the weights' own precision: float32, or for int8 rows bf16 activations (what
        ``_weight_int8pack_mm`` multiplies fast: with float32 ones it runs ~10x slower)."""
        if self.scale is None:
            return F.linear(x, self.weight)
        x = x.to(self.scale.dtype)
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] > PREFILL_DEQUANT:  # a prefill: one wide bf16 product beats int8 row by row
            return F.linear(x, self.weight.to(x.dtype) * self.scale[:, None])
        return torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scale).view(*x.shape[:-1], -1)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self(x).split(self.sizes, dim=-1)


class LlamaDecoder:
    """``forward(ids, start)``: the logits after ``ids`` placed at positions ``start``…, attending to the keys and
    values this decoder cached for positions below ``start`` in earlier calls. A caller that moves on from a
    shorter shared prefix passes that prefix's length as ``start`` (what was cached after it is overwritten)."""

    def __init__(self, model) -> None:
        if (why := unsupported(model)) is not None:
            raise ValueError(f"LlamaDecoder cannot run this model: {why}")
        cfg, base = model.config, model.model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.position_limit = cfg.max_position_embeddings
        self.embed = base.embed_tokens.weight.detach()
        # Keys, values and attention in the products' precision: float32, or bf16 under int8 weights. The residual
        # stream and the norms stay float32 either way (bf16 norms are slower on CPU, and rounder).
        self.dtype = self.embed.dtype
        self.rotary = base.rotary_emb
        self.layers = [
            {
                "norm1": layer.input_layernorm.weight.detach().float(),
                "qkv": _Product([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
                "out": _Product([layer.self_attn.o_proj]),
                "norm2": layer.post_attention_layernorm.weight.detach().float(),
                "gate_up": _Product([layer.mlp.gate_proj, layer.mlp.up_proj]),
                "down": _Product([layer.mlp.down_proj]),
            }
            for layer in base.layers
        ]
        self.norm = base.norm.weight.detach().float()
        self.head = _Product([model.lm_head])
        self.capacity = 0
        self.keys = self.values = self.cos = self.sin = None

    def _reserve(self, n: int) -> None:
        """Room for ``n`` positions: the cache and the rotary table grow by doubling, keeping what they hold."""
        if n <= self.capacity:
            return
        if n > self.position_limit:
            raise ValueError(f"{n} positions are past the model's limit of {self.position_limit}")
        cap = min(self.position_limit, max(n, 2 * self.capacity, 256))
        shape = (len(self.layers), self.kv_heads, cap, self.head_dim)
        keys, values = torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype)
        if self.keys is not None:
            keys[:, :, : self.capacity] = self.keys
            values[:, :, : self.capacity] = self.values
        self.keys, self.values = keys, values
        # transformers' own rotary module, so every rope variant (scaling, attention factor) is the model's
        cos, sin = self.rotary(self.embed[:1].float(), torch.arange(cap)[None])
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
        self.capacity = cap

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    @torch.inference_mode()
    def forward(self, ids: list[int], start: int) -> torch.Tensor:
        n, end = len(ids), start + len(ids)
        self._reserve(end)
        x = self.embed[torch.tensor(ids, dtype=torch.long)][None].float()  # (1, n, hidden)
        cos, sin = self.cos[start:end, None], self.sin[start:end, None]  # (n, 1, head_dim): over every head
        if n == 1 or start == 0:
            mask, causal = None, n > 1
        else:  # new rows after a cached prefix: row i sees positions up to start + i
            mask, causal = torch.ones(n, end, dtype=torch.bool).tril(diagonal=start), False
        qk = (self.heads + self.kv_heads) * self.head_dim
        for i, layer in enumerate(self.layers):
            h = F.rms_norm(x, x.shape[-1:], layer["norm1"], self.eps)
            qkv = layer["qkv"](h)
            # q and k sit side by side in the product: one rotation turns both
            turned = self._rotate(qkv[..., :qk].view(1, n, -1, self.head_dim), cos, sin)
            q, k = turned.split([self.heads, self.kv_heads], dim=2)
            self.keys[i, :, start:end] = k[0].transpose(0, 1)
            self.values[i, :, start:end] = qkv[0, :, qk:].view(n, self.kv_heads, self.head_dim).transpose(0, 1)
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2), self.keys[None, i, :, :end], self.values[None, i, :, :end],
                attn_mask=mask, is_causal=causal, enable_gqa=True,
            )  # fmt: skip
            x = x + layer["out"](y.transpose(1, 2).reshape(1, n, -1))
            h = F.rms_norm(x, x.shape[-1:], layer["norm2"], self.eps)
            gate, up = layer["gate_up"].split(h)
            x = x + layer["down"](F.silu(gate) * up)
        last = F.rms_norm(x[:, -1:], x.shape[-1:], self.norm, self.eps)
        return self.head(last)[0, 0].float()
