"""What ``train.method: scratch`` puts into the shared training loop: a tokenizer and a freshly initialised GPT.

The loop itself does not change: it packs the corpus with this tokenizer, trains the ``GPT`` module like any
causal LM (it returns ``.loss`` and ``.logits``), and at the end saves it converted to Hugging Face GPT-2, so
eval, write, chat and the card load it like any other model.

Tokenizer, in order of preference: the run's own (``Run.tokenizer_dir``, so ``--resume`` never re-trains it),
``model.tokenizer`` (a dir saved by ``shelley tokenizer train``), else one trained now on the training split.
"""

from __future__ import annotations

from pathlib import Path

from shelley.config import ShelleyConfig
from shelley.errors import ShelleyError


def gpt_config(cfg: ShelleyConfig, vocab_size: int):
    from shelley.gpt.model import GPTConfig

    m = cfg.model
    return GPTConfig(
        vocab_size=vocab_size,
        seq_len=m.max_length,
        n_layers=m.n_layers,
        n_heads=m.n_heads,
        d_model=m.d_model,
        dropout=m.dropout,
        tie_weights=m.tie_weights,
    )


def check_scratch_config(cfg: ShelleyConfig, *, tokenizer_given: bool = False) -> None:
    """Shape errors a user can make in the config, caught before the run dir or a tokenizer is made."""
    from shelley.gpt.tokenizer import SPECIAL_TOKENS, min_vocab_size

    m = cfg.model
    if m.d_model % m.n_heads:
        raise ShelleyError(
            f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; "
            "pick n_heads that divides d_model (e.g. d_model 256 with 4 or 8 heads)"
        )
    if not tokenizer_given and not m.tokenizer and m.vocab_size < min_vocab_size():
        raise ShelleyError(
            f"model.vocab_size={m.vocab_size} is too small: the 256 byte tokens and {len(SPECIAL_TOKENS)} special "
            f"tokens need {min_vocab_size()}; set model.vocab_size to at least {min_vocab_size()} (4096 is typical)"
        )


def load_gpt_tokenizer(path: str | Path):
    """A tokenizer dir saved by ``shelley tokenizer train`` (or any fast tokenizer dir) with an EOS token."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise ShelleyError(
            f"no tokenizer.json in {path}; train one with `shelley tokenizer train CORPUS --out DIR` "
            "or unset model.tokenizer to train it with the model"
        )
    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    if tok.eos_token_id is None:
        raise ShelleyError(f"tokenizer {path} has no EOS token; train it with `shelley tokenizer train`")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def scratch_tokenizer(cfg: ShelleyConfig, train_texts: list[str], own: Path, *, main_process: bool = True):
    """The run's tokenizer (see module doc); a newly trained one is saved into ``own`` (the run's tokenizer dir)
    first."""
    from shelley.gpt.tokenizer import save_tokenizer, train_tokenizer

    own = Path(own)
    if (own / "tokenizer.json").exists():
        return load_gpt_tokenizer(own)
    if cfg.model.tokenizer:
        tok = load_gpt_tokenizer(cfg.model.tokenizer)
    else:
        tok = train_tokenizer(train_texts, cfg.model.vocab_size)
    if main_process:
        save_tokenizer(tok, own, overwrite=True)
    return tok


def scratch_model(cfg: ShelleyConfig, tokenizer):
    """A GPT shaped by ``cfg.model`` with one embedding row per token, randomly initialised (seeded by the
    caller); or, when ``model.name`` is a GPT-2 dir saved by an earlier scratch run, that model to train on."""
    from shelley.gpt.model import GPT

    vocab = len(tokenizer)
    name = Path(cfg.model.name)
    if (name / "config.json").exists():
        return continue_from(name, cfg, vocab)
    return GPT(gpt_config(cfg, vocab))


def continue_from(path: Path, cfg: ShelleyConfig, vocab: int):
    """Load an exported scratch GPT to train further; its shape must be the one the config asks for."""
    from transformers import AutoConfig, GPT2LMHeadModel

    from shelley.gpt.model import from_hf

    hf_cfg = AutoConfig.from_pretrained(str(path))
    if hf_cfg.model_type != "gpt2":
        raise ShelleyError(
            f"{path} is a {hf_cfg.model_type!r} checkpoint, not a scratch GPT (GPT-2 layout); "
            "use --method full/lora to fine-tune it, or point model.name at a scratch run's model/ dir"
        )
    want = gpt_config(cfg, vocab)
    have = {
        "n_layers": hf_cfg.n_layer,
        "n_heads": hf_cfg.n_head,
        "d_model": hf_cfg.n_embd,
        "max_length": hf_cfg.n_positions,
        "vocab_size": hf_cfg.vocab_size,
    }
    asked = {
        "n_layers": want.n_layers,
        "n_heads": want.n_heads,
        "d_model": want.d_model,
        "max_length": want.seq_len,
        "vocab_size": vocab,
    }
    diff = [f"model.{k}={asked[k]} vs {have[k]}" for k in have if have[k] != asked[k]]
    if diff:
        raise ShelleyError(
            f"checkpoint {path} has a different architecture ({', '.join(diff)}, config vs checkpoint); "
            "set the model.* keys to the checkpoint's or train a new model"
        )
    return from_hf(GPT2LMHeadModel.from_pretrained(str(path)))


def export_hf(model, tokenizer):
    """The trained GPT as a ``GPT2LMHeadModel`` carrying the tokenizer's special token ids."""
    from shelley.gpt.model import to_hf

    return to_hf(
        model,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).eval()
