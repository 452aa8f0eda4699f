"""The BOS token a model expects at the start of every sequence.

Gemma, Llama and Mistral were pretrained with a BOS token at position 0 of every sequence and score far worse
without it (Gemma 3 270M: perplexity 141.6 without, 34.4 with, on one 256-token passage of the novel). GPT-2
and SmolLM2 never put one there. The tokenizer says which: one that adds BOS when it encodes (its
``add_bos_token`` flag or its ``tokenizer.json`` post-processor) belongs to a model that expects it. shelley
encodes text without special tokens everywhere (packing, scoring, generation) and puts this prefix in front of
every training window, scoring window and prompt itself, so the answer is the same wherever a sequence starts.
"""

from __future__ import annotations


def bos_prefix(tokenizer) -> list[int]:
    """``[bos_token_id]`` when ``tokenizer`` puts BOS in front of what it encodes, else ``[]``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    try:
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    except (TypeError, ValueError, KeyError):
        return []
    return [bos] if ids and ids[0] == bos else []
