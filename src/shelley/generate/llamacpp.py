"""The fast CPU writer: an exported GGUF run by llama.cpp (``llama-cpp-python``) instead of transformers.

``LlamaCppWriter.generate`` takes the prompts and the ``GenerationConfig`` that ``generate_texts`` takes and
returns the continuations, so ``shelley write --engine llamacpp`` keeps the originality guard, the re-sampling
and the stop strings unchanged. Sampling maps onto llama.cpp's own: temperature (0 or do_sample false: greedy),
top-k, top-p, repetition penalty, and one seed per sample. Two settings llama.cpp lacks are named, not dropped
silently: min_new_tokens and no_repeat_ngram_size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from shelley.config import GenerationConfig
from shelley.errors import ShelleyError


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise ShelleyError(
            "--engine llamacpp needs llama-cpp-python: pip install 'shelley[llamacpp]' (or `make setup-llamacpp`)"
        ) from None
    return llama_cpp


class LlamaCppWriter:
    def __init__(self, path: Path, *, n_ctx: int | None = None, threads: int | None = None, logits: bool = False):
        llama_cpp = require_llama_cpp()
        if not Path(path).is_file():
            raise ShelleyError(f"no GGUF file at {path}; make one with `shelley export RUN`")
        self.path = Path(path)
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx or 0,  # 0: the model's own context length
            n_threads=threads or os.cpu_count(),
            logits_all=logits,
            verbose=False,
        )

    @property
    def context(self) -> int:
        return self.llm.n_ctx()

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def generate(
        self,
        prompts: list[str],
        gen: GenerationConfig,
        *,
        on_note: Callable[[str], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> list[str]:
        """``gen.num_samples`` continuations of every prompt, prompt-major (as ``generate_texts``); ``on_text``
        receives the pieces of the first sample as they come."""
        note = on_note or (lambda _m: None)
        if gen.min_new_tokens:
            note("llama.cpp has no min_new_tokens: a sample may end early at end-of-text")
        if gen.no_repeat_ngram_size:
            note("llama.cpp has no no_repeat_ngram_size; the repetition penalty still applies")
        greedy = not gen.do_sample or gen.temperature == 0
        out = []
        for p in prompts:
            for s in range(gen.num_samples):
                kwargs = {
                    "max_tokens": gen.max_new_tokens,
                    "temperature": 0.0 if greedy else gen.temperature,
                    "top_p": gen.top_p,
                    "top_k": gen.top_k,
                    "repeat_penalty": gen.repetition_penalty,
                    "seed": gen.seed + s,
                    "stop": list(gen.stop) or None,
                }
                if on_text is not None and not out:
                    pieces = []
                    for chunk in self.llm.create_completion(p, stream=True, **kwargs):
                        pieces.append(chunk["choices"][0]["text"])
                        on_text(pieces[-1])
                    out.append("".join(pieces))
                else:
                    out.append(self.llm.create_completion(p, **kwargs)["choices"][0]["text"])
        return out

    def logits(self, ids: list[int]):
        """Next-token logits at every position of ``ids`` (needs ``logits=True``): shape (len(ids), vocab)."""
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)
