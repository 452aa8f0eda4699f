"""Tokenizer sanity checks: round trip, lengths, truncation, padding sides and packing efficiency."""

from __future__ import annotations

import statistics
from typing import Any

PADDING_NOTE = (
    "Training pads on the RIGHT: real tokens start at position 0 and pads (label -100) trail, so positions"
    " match pre-training. Generation pads on the LEFT: every prompt then ends at the last position, where"
    " the next token is appended; right-padded prompts would make the model continue after pad tokens."
)


def _pad_share(lengths: list[int], batch_size: int, max_length: int, mode: str) -> float:
    real = padded = 0
    for start in range(0, len(lengths), batch_size):
        batch = [min(n, max_length) for n in lengths[start : start + batch_size]]
        width = max_length if mode == "max_length" else max(batch)
        real += sum(batch)
        padded += width * len(batch)
    return 1 - real / padded if padded else 0.0


def packing_pad_share(lengths: list[int], max_length: int) -> float:
    """Pad share when snippets are concatenated with one EOS each and cut into full blocks.

    Only the tail of the stream that does not fill a whole block is padding (shelley drops it, so the real
    cost is zero; counted here as if padded, to be fair to the comparison).
    """
    stream = sum(n + 1 for n in lengths)  # +1: the EOS between snippets
    blocks = -(-stream // max_length)
    return 1 - stream / (blocks * max_length) if blocks else 0.0


def token_check(
    texts: list[str], tokenizer: Any, *, max_length: int = 256, batch_size: int = 8, samples: int = 200
) -> dict[str, Any]:
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths = [len(x) for x in ids]
    step = max(1, len(texts) // samples)
    sample_idx = list(range(0, len(texts), step))[:samples]
    failures = []
    for i in sample_idx:
        decoded = tokenizer.decode(ids[i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if decoded != texts[i]:
            failures.append({"row": i, "text": texts[i][:200], "decoded": decoded[:200]})
    # Left padding for generation, shown on two prompts of different length.
    # (the tokenizer's own pad token and side are restored afterwards: this is a check, not a setup step)
    pad_token, side = tokenizer.pad_token, tokenizer.padding_side
    tokenizer.pad_token = pad_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    demo = tokenizer(["It was on a dreary night", "I beheld"], padding=True, add_special_tokens=False)
    tokenizer.pad_token, tokenizer.padding_side = pad_token, side
    return {
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        "vocab_size": len(tokenizer),
        "special_tokens": {
            "bos": tokenizer.bos_token,
            "eos": tokenizer.eos_token,
            "pad": tokenizer.pad_token,
        },
        "pad_for_training": tokenizer.pad_token or f"{tokenizer.eos_token} (no pad token: shelley pads with EOS)",
        "rows": len(texts),
        "roundtrip": {"checked": len(sample_idx), "failed": len(failures), "failures": failures[:5]},
        "tokens_per_row": {
            "mean": round(statistics.fmean(lengths), 2) if lengths else 0,
            "max": max(lengths, default=0),
            "total": sum(lengths),
        },
        "max_length": max_length,
        "truncated_share": (sum(n > max_length for n in lengths) / len(lengths)) if lengths else 0.0,
        "pad_share": {
            "pad_to_max_length": round(_pad_share(lengths, batch_size, max_length, "max_length"), 4),
            "pad_to_longest_in_batch": round(_pad_share(lengths, batch_size, max_length, "longest"), 4),
            "packing": round(packing_pad_share(lengths, max_length), 4),
        },
        "batch_size": batch_size,
        "left_padding_demo": demo["attention_mask"],
        "padding_note": PADDING_NOTE,
    }
