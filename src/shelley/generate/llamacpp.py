"""The fast CPU writer: an exported GGUF run by llama.cpp (``llama-cpp-python``) instead of transformers.

``LlamaCppWriter.generate`` takes the prompts and the ``GenerationConfig`` that ``generate_texts`` takes and
returns the continuations, so ``shelley write --engine llamacpp`` keeps the originality guard, the re-sampling
and the stop strings unchanged. Sampling maps onto llama.cpp's own: temperature (0 or do_sample false: greedy),
top-k, top-p, repetition penalty, and one seed per sample; min_new_tokens bans end-of-text for that many tokens
(llama.cpp's logit bias), as transformers does. no_repeat_ngram_size, which llama.cpp lacks, is named, not
dropped silently.
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
        self.token_counts: list[int] = []  # tokens generated per sample by the last generate()
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

    @property
    def trained_context(self) -> int | None:
        """The model's own position limit from the file (llama.cpp rounds its context up past it)."""
        meta = self.llm.metadata or {}
        value = meta.get(f"{meta.get('general.architecture', '')}.context_length")
        return int(value) if value else None

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
        if gen.no_repeat_ngram_size:
            note("llama.cpp has no no_repeat_ngram_size; the repetition penalty still applies")
        greedy = not gen.do_sample or gen.temperature == 0
        out, self.token_counts = [], []
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
                out.append(self._sample(p, kwargs, gen.min_new_tokens, on_text if not out else None))
        return out

    def _sample(self, prompt: str, kwargs: dict, min_new: int, on_text) -> str:
        """One continuation: first ``min_new`` tokens with end-of-text banned, then the rest as usual."""
        text, left, count = "", kwargs["max_tokens"], 0
        phases = [(min(min_new, left), {self.llm.token_eos(): float("-inf")}), (left - min(min_new, left), None)]
        for n, bias in phases:
            if n <= 0:
                continue
            args = kwargs | {"max_tokens": n, "logit_bias": bias}
            if on_text is None:
                res = self.llm.create_completion(prompt + text, **args)
                choice = res["choices"][0]
                text, count = text + choice["text"], count + res["usage"]["completion_tokens"]
            else:
                choice = {}
                for chunk in self.llm.create_completion(prompt + text, stream=True, **args):
                    choice = chunk["choices"][0]
                    text, count = text + choice["text"], count + 1  # one chunk per token
                    on_text(choice["text"])
            if choice.get("finish_reason") == "stop":  # end-of-text or a stop string: the sample is done
                break
        self.token_counts.append(count)
        return text

    def scene_engine(self, gen: GenerationConfig) -> LlamaCppEngine:
        """This model as the scene writer's token engine, sampling as ``gen`` says."""
        return LlamaCppEngine(self, gen)

    def logits(self, ids: list[int]):
        """Next-token logits at every position of ``ids`` (needs ``logits=True``): shape (len(ids), vocab)."""
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)


class LlamaCppEngine:
    """``continue_ids`` (the scene writer's engine) over llama.cpp: token ids in, token ids out, so the scene's
    rolling context and guard work as with transformers. llama.cpp keeps the KV cache of the longest prefix the
    next call shares with the last one by itself."""

    def __init__(self, writer: LlamaCppWriter, gen: GenerationConfig) -> None:
        self.llm = writer.llm
        self.position_limit = min(writer.context, writer.trained_context or writer.context)
        greedy = not gen.do_sample or gen.temperature == 0
        self.sampling = {
            "temp": 0.0 if greedy else gen.temperature,
            "top_k": gen.top_k,
            "top_p": gen.top_p,
            "min_p": 0.0,  # llama.cpp's default 0.05 would cut tokens transformers keeps: sample as it does
            "repeat_penalty": gen.repetition_penalty,
        }

    def continue_ids(self, ids, max_new, *, seed, ban_eos=False, on_token=None):
        import numpy as np

        llama_cpp = require_llama_cpp()
        eos = self.llm.token_eos()
        banned = [ban_eos]

        def ban_first_eos(_input_ids, scores):
            if banned[0]:
                scores[eos] = -np.inf
                banned[0] = False
            return scores

        self.llm.set_seed(seed)
        out: list[int] = []
        stream = self.llm.generate(
            ids, reset=True, logits_processor=llama_cpp.LogitsProcessorList([ban_first_eos]), **self.sampling
        )
        for tok in stream:
            out.append(int(tok))
            if on_token:
                on_token(int(tok))
            if tok == eos or len(out) >= max_new:
                break
        return out
