"""One stream of decoding for Llama-architecture models on CPU: the same function as transformers' forward, in
fewer operations.

transformers' forward serves every model, cache and device. For one decoded token of SmolLM2-135M on 2 cores it
spends about as long between its matrix products (module calls, a key/value cache grown by concatenation,
casts) as in them: ~65 ms a token, ~32 of them in the products. This decoder reads the model's own weights once
and then, per layer and token, runs one product for q/k/v together, one for the attention output, one for gate
and up together and one for down, with keys and values written into a cache allocated ahead. One token of one
row (a scene's every step) takes a leaner path still (``_one``), with the same numbers. The numbers are
the model's (``tests/test_llama_decode.py`` holds them to transformers' logits).

Weights stay what the model holds: float ``nn.Linear`` weights, or the int8 rows and scales of
``models.decode.Int8Linear`` (``--int8``), whose product reads a quarter of the bytes. On 2 cores the int8 step is
about twice as fast as transformers' float one; see ``docs/results`` (decode speed).

With ``slots``, the cache holds many rows, each in its own slot, and ``forward_rows`` runs a token of every
running row (or the prompts of rows that join) as one batch: the demo's many readers. With ``wide``, products of
at least ``WIDE_ROWS`` rows run on a bf16 copy of the weights: on a CPU with AVX512-BF16 a 50-row product is
about 2.5x faster in bf16 than in float32, while one row is faster on the float32 weights (see there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shelley.models.decode import Int8Linear

ARCHITECTURES = ("llama", "mistral")  # Mistral without a sliding window is Llama's function
PREFILL_DEQUANT = 8  # int8 products for more rows than this run on weights widened to bf16: int8pack_mm goes row by row
# With ``wide``, products of this many rows or more run on the bf16 copy. All 30 layers' products of SmolLM2-135M
# and its head on 2 Xeon cores with AVX512-BF16 (ms, float32 / bf16): 1 row 33.5 / 39.3, 2 rows 35.6 / 35.6,
# 3 rows 38.9 / 36.0, 4 rows 62.0 / 36.8, 8 rows 82.4 / 38.4, 50 rows 152 / 61.
WIDE_ROWS = 3


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

    def __init__(self, layers: list, *, wide: bool = False) -> None:
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
        self.wide = self._widened() if wide else None

    def _widened(self) -> torch.Tensor:
        """The weights in bf16 (int8 rows times their scales), for products of many rows."""
        if self.scale is None:
            return self.weight.to(torch.bfloat16)
        return self.weight.to(self.scale.dtype) * self.scale[:, None]  # int8 scales are bf16 (Int8Linear)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The product in the weights' own precision: float32, or for int8 rows bf16 activations (what
        ``_weight_int8pack_mm`` multiplies fast: with float32 ones it runs ~10x slower); many rows on the bf16
        copy where there is one (bf16 out)."""
        if self.wide is not None and x.numel() // x.shape[-1] >= WIDE_ROWS:
            return F.linear(x.to(torch.bfloat16), self.wide)
        if self.scale is None:
            return F.linear(x.to(self.weight.dtype), self.weight)
        x = x.to(self.scale.dtype)
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] > PREFILL_DEQUANT:  # a prefill: one wide bf16 product beats int8 row by row
            return F.linear(x, self._widened())
        return torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scale).view(*x.shape[:-1], -1)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self(x).split(self.sizes, dim=-1)

    def one(self, x: torch.Tensor) -> torch.Tensor:
        """The product of one row (1, in): ``__call__``'s result for it, without its checks."""
        if self.scale is None:
            return F.linear(x, self.weight)
        return torch.ops.aten._weight_int8pack_mm(x.to(self.scale.dtype), self.weight, self.scale)


def _reach(ends: list[int]) -> tuple[int, list[tuple[int, int]]] | None:
    """For a step of one token a row, the rows ending at ``ends``: (cut, [(row, end)] of the rows past the cut)
    when at most a quarter of them reach more than twice as far as the others (a scene's 1,000 positions beside
    readers' 60), else None. Attention over the batch costs its rows times the longest row's positions: at 50 rows
    and 1,000 positions about 10 ms a layer on 2 cores, 300 ms a step, for the 5 rows that need it."""
    if len(ends) < 4:
        return None
    most = sorted(ends)[len(ends) * 3 // 4 - 1]  # three rows in four end here or sooner
    cut = max(e for e in ends if e <= 2 * most)
    long = [(j, e) for j, e in enumerate(ends) if e > cut]
    return (cut, long) if long else None


class LlamaDecoder:
    """``forward(ids, start)``: the logits after ``ids`` placed at positions ``start``…, attending to the keys and
    values this decoder cached for positions below ``start`` in earlier calls. A caller that moves on from a
    shorter shared prefix passes that prefix's length as ``start`` (what was cached after it is overwritten).

    ``slots``: how many rows the cache holds, each in a slot of its own (``forward`` uses slot 0); ``forward_rows``
    runs several slots as one batch. ``wide``: products of many rows run on a bf16 copy of the weights.
    ``positions``: the most any slot may hold (default: the model's position limit)."""

    def __init__(self, model, *, slots: int = 1, wide: bool = False, positions: int | None = None) -> None:
        if (why := unsupported(model)) is not None:
            raise ValueError(f"LlamaDecoder cannot run this model: {why}")
        cfg, base = model.config, model.model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        # ``positions``: fewer than the model's own, so that a cache of many slots cannot double past what its rows
        # may hold (64 slots of SmolLM2 at 2,048 positions would be 6 GB in float32)
        self.position_limit = min(cfg.max_position_embeddings, positions or cfg.max_position_embeddings)
        self.slots = slots
        self.embed = base.embed_tokens.weight.detach()
        # Keys, values and attention in the weights' precision: float32, or bf16 under int8 weights (``wide`` or
        # not: at 50 rows of 35 positions float32 attention is 3-4x faster than bf16 on this CPU's kernels). The
        # residual stream and the norms stay float32 either way (bf16 norms are slower on CPU, and rounder).
        self.dtype = self.embed.dtype
        self.rotary = base.rotary_emb
        self.layers = [
            {
                "norm1": layer.input_layernorm.weight.detach().float(),
                "qkv": _Product([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj], wide=wide),
                "out": _Product([layer.self_attn.o_proj], wide=wide),
                "norm2": layer.post_attention_layernorm.weight.detach().float(),
                "gate_up": _Product([layer.mlp.gate_proj, layer.mlp.up_proj], wide=wide),
                "down": _Product([layer.mlp.down_proj], wide=wide),
            }
            for layer in base.layers
        ]
        self.norm = base.norm.weight.detach().float()
        self.head = _Product([model.lm_head], wide=wide)
        self.capacity = 0
        self.keys = self.values = self.cos = self.sin = None

    def _reserve(self, n: int) -> None:
        """Room for ``n`` positions in every slot: the cache and the rotary table grow by doubling, keeping what
        they hold."""
        if n <= self.capacity:
            return
        if n > self.position_limit:
            raise ValueError(f"{n} positions are past the model's limit of {self.position_limit}")
        cap = min(self.position_limit, max(n, 2 * self.capacity, 256))
        shape = (len(self.layers), self.slots, self.kv_heads, cap, self.head_dim)
        keys, values = torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype)
        if self.keys is not None:
            keys[..., : self.capacity, :] = self.keys
            values[..., : self.capacity, :] = self.values
        self.keys, self.values = keys, values
        # transformers' own rotary module, so every rope variant (scaling, attention factor) is the model's
        cos, sin = self.rotary(self.embed[:1].float(), torch.arange(cap)[None])
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
        half = self.head_dim // 2  # rotate_half's sign folded into sin, for ``_one`` (a sign flip is exact)
        self.sin_signed = torch.cat((-self.sin[:, :half], self.sin[:, half:]), dim=-1)
        self.capacity = cap

    @torch.inference_mode()  # the cache is made in inference mode and may only be written there
    def move(self, source: int, target: int) -> None:
        """Copy slot ``source``'s cache into slot ``target`` (a batcher keeping its running rows side by side)."""
        if self.keys is not None:
            self.keys[:, target] = self.keys[:, source]
            self.values[:, target] = self.values[:, source]

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _attend(self, i: int, first: int, q, mask, causal: bool, end: int, reach) -> torch.Tensor:
        """Layer ``i``'s attention for the span's queries (rows, heads, width, head_dim). ``reach``: (cut, long
        rows) for a step whose few long rows would make every row attend over the longest one's positions: the
        batch attends up to ``cut`` only, and each long row (one query) again over its own positions, alone."""
        span = q.shape[0]
        keys, values = self.keys[i, first : first + span], self.values[i, first : first + span]
        cut, long = reach or (end, [])
        y = F.scaled_dot_product_attention(
            q, keys[:, :, :cut], values[:, :, :cut], attn_mask=None if mask is None else mask[..., :cut],
            is_causal=causal, enable_gqa=True,
        )  # fmt: skip
        for j, stop in long:  # their rows above attended only up to ``cut``: replaced
            y[j] = F.scaled_dot_product_attention(
                q[j : j + 1], keys[j : j + 1, :, :stop], values[j : j + 1, :, :stop], enable_gqa=True
            )[0]
        return y

    def forward(self, ids: list[int], start: int) -> torch.Tensor:
        return self.forward_rows(0, [ids], [start])[0]

    @torch.inference_mode()  # the cache is written in inference mode (see ``move``)
    def _one(self, slot: int, token: int, pos: int) -> torch.Tensor:
        """``forward_rows`` for one token of one row, a scene's every step: the same operations on the same
        numbers (the tests hold the two paths to each other bit for bit), minus what only a span of rows or of
        tokens needs (padding, masks, write indices, reshapes). Between its products a step is dozens of small
        operations a layer, and on 2 cores their Python and dispatch cost is a large share of an int8 step."""
        self._reserve(pos + 1)
        heads, kv, d, eps = self.heads, self.kv_heads, self.head_dim, self.eps
        qk_width, half = (heads + kv) * d, d // 2
        cos, sin = self.cos[pos], self.sin_signed[pos]
        keys, values = self.keys[:, slot, :, : pos + 1], self.values[:, slot, :, : pos + 1]  # (layers, kv, n, d)
        x = self.embed[token][None].float()  # (1, hidden)
        for i, layer in enumerate(self.layers):
            h = F.rms_norm(x, x.shape[-1:], layer["norm1"], eps)
            qkv = layer["qkv"].one(h)[0].to(self.dtype)
            qk = qkv[:qk_width].view(heads + kv, d)
            qk = qk * cos + qk.view(-1, 2, half).flip(1).view(-1, d) * sin  # rotate_half, one rotation for q and k
            keys[i, :, pos] = qk[heads:]
            values[i, :, pos] = qkv[qk_width:].view(kv, d)
            y = F.scaled_dot_product_attention(qk[None, :heads, None], keys[i][None], values[i][None], enable_gqa=True)
            x = x + layer["out"].one(y.view(1, -1))
            h = F.rms_norm(x, x.shape[-1:], layer["norm2"], eps)
            gate, up = layer["gate_up"].one(h).split(layer["gate_up"].sizes, dim=-1)
            x = x + layer["down"].one(F.silu(gate) * up)
        return self.head.one(F.rms_norm(x, x.shape[-1:], self.norm, eps)).float()

    def forward_rows(
        self, first: int, rows: list[list[int] | None], starts: list[int], *, logits: bool = True
    ) -> torch.Tensor | None:  # fmt: skip
        """One batch over the slots ``first``, ``first + 1``, …: ``rows[j]``, the ids for slot ``first + j``,
        placed at positions ``starts[j]``… and attending to what that slot cached below. A None row is a slot
        inside the span that takes no part: nothing of it is read or written. Returns the float32 logits after
        the last id of every row that is not None, in order (``logits`` False: None, the cache only)."""
        if len(rows) == 1 and rows[0] is not None and len(rows[0]) == 1 and logits:
            return self._one(first, rows[0][0], starts[0])
        return self._rows(first, rows, starts, logits)

    @torch.inference_mode()
    def _rows(self, first: int, rows: list[list[int] | None], starts: list[int], logits: bool) -> torch.Tensor | None:
        lens = [len(r) if r else 0 for r in rows]
        starts = [s if n else 0 for s, n in zip(starts, lens, strict=True)]
        span, width = len(rows), max(lens)
        ends = [s + n for s, n in zip(starts, lens, strict=True)]
        end = max(ends)
        self._reserve(end)
        if span == 1:  # one stream: slices, and no mask for a single token
            start = starts[0]
            x = self.embed[torch.tensor(rows[0], dtype=torch.long)][None].float()  # (1, n, hidden)
            cos, sin = self.cos[start:end, None], self.sin[start:end, None]  # (n, 1, head_dim): over every head
            if width == 1 or start == 0:
                mask, causal = None, width > 1
            else:  # new ids after a cached prefix: id i sees positions up to start + i
                mask, causal = torch.ones(width, end, dtype=torch.bool).tril(diagonal=start), False
        else:  # rows padded on the right to one width; each query sees its own slot up to its own position
            tokens = torch.zeros(span, width, dtype=torch.long)
            for j, r in enumerate(rows):
                if r:
                    tokens[j, : len(r)] = torch.tensor(r)
            x = self.embed[tokens].float()
            pos = (torch.tensor(starts)[:, None] + torch.arange(width)).clamp(max=self.capacity - 1)
            cos, sin = self.cos[pos][:, :, None], self.sin[pos][:, :, None]  # (rows, width, 1, head_dim)
            mask, causal = (torch.arange(end)[None, None, :] <= pos[:, :, None])[:, None], False
            real = [(j, t) for j in range(span) for t in range(lens[j])]  # only these positions are written
            b = torch.tensor([j for j, _ in real])
            write = (first + b, torch.tensor([starts[j] + t for j, t in real]), b, torch.tensor([t for _, t in real]))
        reach = _reach(ends) if width == 1 and span > 1 else None
        qk = (self.heads + self.kv_heads) * self.head_dim
        for i, layer in enumerate(self.layers):
            h = F.rms_norm(x, x.shape[-1:], layer["norm1"], self.eps)
            qkv = layer["qkv"](h).to(self.dtype)
            # q and k sit side by side in the product: one rotation turns both
            turned = self._rotate(qkv[..., :qk].view(span, width, -1, self.head_dim), cos, sin)
            q, k = turned.split([self.heads, self.kv_heads], dim=2)
            v = qkv[..., qk:].view(span, width, self.kv_heads, self.head_dim)
            if span == 1:
                self.keys[i, first, :, start:end] = k[0].transpose(0, 1)
                self.values[i, first, :, start:end] = v[0].transpose(0, 1)
            else:
                slot, at, row, t = write
                self.keys[i][slot, :, at] = k[row, t]
                self.values[i][slot, :, at] = v[row, t]
            y = self._attend(i, first, q.transpose(1, 2), mask, causal, end, reach)
            x = x + layer["out"](y.transpose(1, 2).reshape(span, width, -1))
            h = F.rms_norm(x, x.shape[-1:], layer["norm2"], self.eps)
            gate, up = layer["gate_up"].split(h)
            x = x + layer["down"](F.silu(gate) * up)
        if not logits:
            return None
        live = [j for j in range(span) if lens[j]]
        last = x[live, [lens[j] - 1 for j in live]]  # (rows, hidden)
        return self.head(F.rms_norm(last, last.shape[-1:], self.norm, self.eps)).float()
