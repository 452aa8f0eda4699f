"""Byte-level BPE trained on the corpus with the ``tokenizers`` library, saved for ``PreTrainedTokenizerFast``.

Byte-level means the 256 byte values are the base alphabet: any text (accents, curly quotes, emoji) encodes
without an unknown token and decodes back exactly. Merges learned on the corpus then make frequent words one
token each. Special tokens are reserved up front so chat formatting and end-of-text never split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shelley.errors import ShelleyError
from shelley.io import atomic_dir

EOS = "<|endoftext|>"  # also used as BOS: documents are separated by one token, as in GPT-2
PAD = "<|pad|>"
CHAT_ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = [EOS, PAD, *CHAT_ROLES]
BYTE_ALPHABET = 256


def min_vocab_size() -> int:
    return BYTE_ALPHABET + len(SPECIAL_TOKENS)


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < min_vocab_size():
        raise ShelleyError(
            f"--vocab-size {vocab_size} is too small: the 256 byte tokens and {len(SPECIAL_TOKENS)} special tokens "
            f"need {min_vocab_size()}; use at least {min_vocab_size()} (a few thousand is typical)"
        )


def train_tokenizer(texts: list[str], vocab_size: int, *, min_frequency: int = 2):
    """Train a byte-level BPE on ``texts``; returns a ``PreTrainedTokenizerFast`` with bos/eos/pad set."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    check_vocab_size(vocab_size)
    if not any(t.strip() for t in texts):
        raise ShelleyError("the corpus has no text to train a tokenizer on; check the corpus file")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(CHAT_ROLES),
        clean_up_tokenization_spaces=False,
    )


def compression(tokenizer, texts: list[str]) -> dict[str, Any]:
    """Characters per token on ``texts`` (higher = the tokenizer fits the text better)."""
    chars = sum(len(t) for t in texts)
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return {"characters": chars, "tokens": tokens, "chars_per_token": chars / max(1, tokens)}


def save_tokenizer(tokenizer, out: Path, *, overwrite: bool = False) -> Path:

    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        tokenizer.save_pretrained(tmp)
    return Path(out)


def train_and_save(train_texts: list[str], val_texts: list[str], vocab_size: int, out: Path, *, overwrite: bool):
    """Train a byte-level BPE on ``train_texts``, save it to ``out``; returns (tokenizer, its compression on the
    validation text, or the training text when there is none)."""
    check_vocab_size(vocab_size)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ShelleyError(f"{out} already exists; pass --overwrite or another --out")
    tok = train_tokenizer(train_texts, vocab_size)
    save_tokenizer(tok, out, overwrite=overwrite)
    return tok, compression(tok, val_texts or train_texts) | {"on": "validation" if val_texts else "training"}
