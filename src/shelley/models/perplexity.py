"""Perplexity on a fixed token stream, token-weighted, with a sliding window for long texts.

Every model is scored on exactly the same validation tokens (the same stream, windows and targets), so a
base-vs-fine-tuned comparison differs only in the weights.
"""

from __future__ import annotations

import math

import numpy as np

from shelley.models.head import next_token_nll


def windows(length: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) windows: each token is predicted exactly once, with up to
    ``max_length - stride`` tokens of context carried over from the previous window."""
    stride = min(stride, max_length)
    out = []
    prev_end = 0
    for begin in range(0, max(1, length - 1), stride):
        end = min(begin + max_length, length)
        first_target = max(prev_end, begin + 1)  # position 0 of the stream has no context to be predicted from
        if end > first_target:
            out.append((begin, end, first_target))
        prev_end = end
        if end == length:
            break
    return out


def perplexity(
    model,
    stream: np.ndarray,
    *,
    max_length: int,
    stride: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = False,
    prefix: list[int] | None = None,
) -> dict[str, float]:
    """Token-weighted mean NLL and perplexity of ``model`` over ``stream`` (a 1-D array of token ids).
    ``prefix`` (the BOS a model expects, ``models.bos``) opens every window and is never a target; the
    windows then hold ``max_length - len(prefix)`` tokens of the stream (the same for base and fine-tuned)."""
    import torch

    if max_tokens is not None:
        stream = stream[: max_tokens + 1]
    pre = np.asarray(prefix or [], dtype=np.int64)
    wins = windows(len(stream), max_length - len(pre), stride)
    device = next(model.parameters()).device
    total_nll = 0.0
    total_tokens = 0
    was_training = model.training
    model.eval()
    # Windows of equal length batch together; only the last one is shorter.
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for w in wins:
        groups.setdefault(w[1] - w[0], []).append(w)
    batches = [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
    iterator = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="perplexity", leave=False)
    with torch.inference_mode():
        for batch in iterator:
            rows = [np.concatenate([pre, np.asarray(stream[b:e], dtype=np.int64)]) for b, e, _ in batch]
            ids = torch.from_numpy(np.stack(rows)).to(device)
            nll = next_token_nll(model, ids)  # (B, T-1): position t predicts token t+1
            for row, (b, _, first) in enumerate(batch):
                part = nll[row, len(pre) + first - b - 1 :]
                total_nll += float(part.sum())
                total_tokens += part.numel()
    model.train(was_training)
    mean = total_nll / max(1, total_tokens)
    return {"nll": mean, "perplexity": math.exp(mean), "tokens": total_tokens}


def scored_text(tokenizer, stream: np.ndarray, max_tokens: int | None = None) -> str:
    """The text ``perplexity`` scores on ``stream``: every token but the first, end-of-text read as a line break."""
    targets = np.asarray(stream[1 : None if max_tokens is None else max_tokens + 1], dtype=np.int64)
    eos = tokenizer.eos_token_id
    cuts = np.flatnonzero(targets == eos) if eos is not None else np.array([], dtype=np.int64)
    pieces = np.split(targets, cuts)
    texts = [tokenizer.decode(p[1:] if i else p, skip_special_tokens=True) for i, p in enumerate(pieces)]
    return "\n".join(texts)


def per_byte(scored: dict[str, float], text: str) -> dict[str, float]:
    """Bits per byte and per word of the scored text: the measure that compares models whose tokenizers differ
    (a perplexity is per token, and tokens are not the same unit across tokenizers)."""
    bits = scored["nll"] * scored["tokens"] / math.log(2)
    n_bytes, n_words = len(text.encode("utf-8")), len(text.split())
    return {
        "bytes": n_bytes,
        "words": n_words,
        "bits_per_byte": bits / n_bytes if n_bytes else float("nan"),
        "bits_per_word": bits / n_words if n_words else float("nan"),
    }


def unigram_baselines(train_stream: np.ndarray, val_stream: np.ndarray, vocab_size: int) -> dict[str, float]:
    """What a model that ignores context scores on the validation targets, in nats/token:

    * ``entropy``: the entropy of the validation text's own token frequencies, the best any context-free
      model could do on it (it has seen the answers' counts);
    * ``cross_entropy``: a unigram fitted on the training text (add-one smoothed) scored on validation, the
      honest context-free baseline.

    A model that learned anything beyond word frequencies scores below both.
    """
    targets = np.asarray(val_stream[1:], dtype=np.int64)  # the tokens perplexity() predicts
    counts = np.bincount(targets, minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    train_counts = np.bincount(np.asarray(train_stream, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    q = (train_counts + 1) / (train_counts.sum() + len(train_counts))
    return {
        "entropy": float(-(p * np.log(p)).sum()),
        "cross_entropy": float(-np.log(q[targets]).mean()),
        "tokens": len(targets),
    }


def position_losses(
    model, stream: np.ndarray, *, window: int = 1024, batch_size: int = 2, prefix: list[int] | None = None
) -> dict:
    """The context curve: mean loss (nats) of the token at each position of non-overlapping ``window``-token
    windows of ``stream``, i.e. with 1 ... window-1 tokens of context. A model that uses long context scores
    lower late in the window than early; fine-tuning on short windows can lose that. ``prefix`` (a BOS) opens
    each window and is not counted as context."""
    import torch

    pre = np.asarray(prefix or [], dtype=np.int64)
    n = len(stream) // window
    if n == 0:
        return {"window": window, "windows": 0, "loss": []}
    total = torch.zeros(window - 1, dtype=torch.float64)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            rows = [
                np.concatenate([pre, np.asarray(stream[j * window : (j + 1) * window], dtype=np.int64)])
                for j in range(i, min(n, i + batch_size))
            ]
            ids = torch.from_numpy(np.stack(rows)).to(device)
            # Input position len(pre) + t holds stream token t and predicts token t+1, with t+1 tokens of context.
            nll = next_token_nll(model, ids)[:, len(pre) :]  # (B, window-1)
            total += nll.sum(0).double().cpu()
    model.train(was_training)
    return {"window": window, "windows": n, "loss": (total / n).tolist()}


def band(curve: dict, lo: int, hi: int) -> float | None:
    """Mean loss of the context curve over positions ``lo`` ... ``hi`` (1-based, inclusive; position p has p
    tokens of context)."""
    loss = curve["loss"][lo - 1 : hi]
    return float(np.mean(loss)) if loss else None
