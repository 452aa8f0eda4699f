"""A GPT in plain PyTorch, small enough to read in one sitting (after nanoGPT's model.py).

The layout is GPT-2's on purpose: token + learned position embeddings, pre-norm blocks of causal
self-attention and a GELU MLP, a final LayerNorm and an output head tied to the token embeddings. That makes
``to_hf`` a pure renaming of tensors, so a model trained here is saved as a ``GPT2LMHeadModel`` and every
other shelley command (eval, write, serve, card) treats it like any pretrained model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from shelley.errors import ShelleyError


@dataclass
class GPTConfig:
    vocab_size: int = 4096  # tokens in the tokenizer (special tokens included)
    seq_len: int = 256  # longest context the model sees; sets the size of the position table
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads per block; d_model must divide evenly among them
    d_model: int = 256  # width of the residual stream
    dropout: float = 0.0  # on attention weights, residual branches and embeddings (0 for tiny data is fine)
    tie_weights: bool = True  # output head shares the token embedding matrix (fewer params, better small-data)
    layer_norm_eps: float = 1e-5  # GPT-2's epsilon, so the export matches it bit for bit

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ShelleyError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                "pick n_heads that divides d_model (e.g. d_model 256 with 4 or 8 heads)"
            )
        for name in ("vocab_size", "seq_len", "n_layers", "n_heads", "d_model"):
            if getattr(self, name) <= 0:
                raise ShelleyError(f"model.{name} must be positive (got {getattr(self, name)})")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): heads attend independently
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        # Fused attention (flash / memory-efficient kernels where available); is_causal masks the future.
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2's "gelu_new" is the tanh approximation; using it keeps the HF export exact.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pre-norm: normalise the input of each branch, keep the residual stream itself untouched.
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the init of each residual projection by 1/sqrt(2 * layers): the residual stream sums
        # 2 branches per block, and this keeps its variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_input_embeddings(self) -> nn.Embedding:  # same accessor as a Hugging Face model
        return self.wte

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_: object) -> SimpleNamespace:
        """Logits for every position; with ``labels`` (usually the inputs themselves) also the mean
        next-token cross-entropy, like a Hugging Face causal LM, so the training loop need not know the
        difference."""
        T = input_ids.shape[1]
        if self.config.seq_len < T:
            raise ShelleyError(
                f"sequence of {T} tokens is longer than model.seq_len={self.config.seq_len}; "
                "lower model.max_length or raise model.seq_len"
            )
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))  # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if labels is not None:
            # Position t predicts token t+1: shift, then flatten to (B*(T-1), V).
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1))
        return SimpleNamespace(logits=logits, loss=loss)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after ``input_ids`` (B, T); temperature 0 decodes greedily.
        No KV cache: the model is small and this stays readable; exported models use HF's cached generate."""
        for _ in range(max_new_tokens):
            context = input_ids[:, -self.config.seq_len :]  # crop to the context window
            logits = self(context).logits[:, -1, :]  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                if top_p is not None and top_p < 1.0:
                    sorted_logits, order = torch.sort(logits, descending=True)
                    cum = sorted_logits.softmax(-1).cumsum(-1)
                    # Drop tokens once the mass before them already reaches top_p (the first always stays).
                    drop = cum - sorted_logits.softmax(-1) >= top_p
                    logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), num_samples=1)  # (B, 1)
            input_ids = torch.cat([input_ids, nxt], dim=1)
            if eos_token_id is not None and bool((nxt == eos_token_id).all()):
                break
        return input_ids


# ------------------------------------------------------------------------------ Hugging Face GPT-2 format

# HF's GPT-2 stores these as Conv1D, whose weight is (in, out): the transpose of nn.Linear's (out, in).
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_config(cfg: GPTConfig, **token_ids: int | None):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.seq_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=cfg.layer_norm_eps,
        activation_function="gelu_new",
        tie_word_embeddings=cfg.tie_weights,
        **{k: v for k, v in token_ids.items() if v is not None},
    )


def to_hf(model: GPT, **token_ids: int | None):
    """A ``GPT2LMHeadModel`` with exactly this model's weights (bos/eos/pad ids go into its config)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(hf_config(model.config, **token_ids))
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_weights:
            continue
        key = name if name == "lm_head.weight" else f"transformer.{name}"
        state[key] = tensor.t().contiguous() if name.endswith(_CONV1D) else tensor
    missing, unexpected = hf.load_state_dict(state, strict=False)
    allowed = {"lm_head.weight"} if model.config.tie_weights else set()
    if unexpected or set(missing) - allowed - {k for k in missing if k.endswith(".attn.bias")}:
        raise RuntimeError(f"GPT -> GPT-2 export mismatch: missing {missing}, unexpected {unexpected}")
    if model.config.tie_weights:
        hf.tie_weights()
    return hf


def from_hf(hf) -> GPT:
    """Back from a ``GPT2LMHeadModel`` (e.g. one saved by ``to_hf``) to this module, for more training."""
    c = hf.config
    if getattr(c, "model_type", None) != "gpt2":
        raise ShelleyError(f"checkpoint is a {c.model_type!r} model, not GPT-2; the scratch GPT loads GPT-2 exports")
    cfg = GPTConfig(
        vocab_size=c.vocab_size,
        seq_len=c.n_positions,
        n_layers=c.n_layer,
        n_heads=c.n_head,
        d_model=c.n_embd,
        dropout=c.resid_pdrop,
        tie_weights=c.tie_word_embeddings,
        layer_norm_eps=c.layer_norm_epsilon,
    )
    model = GPT(cfg)
    state = {}
    for key, tensor in hf.state_dict().items():
        if key.endswith(".attn.bias") or key.endswith(".attn.masked_bias"):
            continue
        name = key.removeprefix("transformer.")
        if name == "lm_head.weight" and cfg.tie_weights:
            continue
        state[name] = tensor.t().contiguous() if name.endswith(_CONV1D) else tensor
    model.load_state_dict(state, strict=not cfg.tie_weights)
    return model


def config_dict(cfg: GPTConfig) -> dict:
    return asdict(cfg)
