"""Token streams cached as ``.npy`` memmaps and cut into fixed blocks: no pad tokens, no waste.

Snippets are encoded once, joined with one EOS after each (so the model learns where a passage ends),
and written to disk. Training reads fixed ``block_size`` windows straight from the memmap.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


def stream_key(texts: list[str], tokenizer) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([getattr(tokenizer, "name_or_path", ""), len(tokenizer), tokenizer.eos_token]).encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def encode_stream(texts: list[str], tokenizer, cache_dir: Path, name: str) -> np.ndarray:
    """Return the token stream of ``texts`` (EOS after each), from cache when the same texts were seen."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{name}-{stream_key(texts, tokenizer)}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no EOS token")
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    total = sum(len(x) + 1 for x in ids)
    dtype = np.uint16 if len(tokenizer) < 2**16 else np.uint32
    tmp = path.with_suffix(f".tmp-{os.getpid()}.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(total,))
    pos = 0
    for x in ids:
        arr[pos : pos + len(x)] = x
        arr[pos + len(x)] = eos
        pos += len(x) + 1
    arr.flush()
    del arr
    os.replace(tmp, path)  # atomic: a half-written cache never has the final name
    return np.load(path, mmap_mode="r")


class PackedBlocks:
    """Non-overlapping ``block_size`` windows over a token stream; the tail that fills no block is dropped.
    ``prefix`` (the BOS a model expects, ``models.bos``) opens every window, before ``block_size - len(prefix)``
    tokens of the stream."""

    def __init__(self, stream: np.ndarray, block_size: int, prefix: list[int] | None = None) -> None:
        self.stream = stream
        self.block_size = block_size
        self.prefix = list(prefix or [])
        self.step = block_size - len(self.prefix)
        self.n = len(stream) // self.step

    def __len__(self) -> int:
        return self.n

    def batch(self, indices: list[int]):
        import torch

        s, p = self.step, np.asarray(self.prefix, dtype=np.int64)
        rows = np.stack(
            [np.concatenate([p, np.asarray(self.stream[i * s : (i + 1) * s], dtype=np.int64)]) for i in indices]
        )
        return torch.from_numpy(rows)  # (B, T)


def block_order(n_blocks: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled block order of one epoch: a pure function of (seed, epoch), so a resumed run sees the same."""
    return np.random.default_rng([seed, epoch]).permutation(n_blocks)


def micro_batch_indices(n_blocks: int, micro_batch: int, seed: int, micro_step: int) -> list[int]:
    """Block indices of global micro-batch number ``micro_step`` (epochs follow each other seamlessly)."""
    start = micro_step * micro_batch
    out: list[int] = []
    while len(out) < micro_batch:
        epoch, offset = divmod(start + len(out), n_blocks)
        order = block_order(n_blocks, seed, epoch)
        take = min(micro_batch - len(out), n_blocks - offset)
        out.extend(int(i) for i in order[offset : offset + take])
    return out
