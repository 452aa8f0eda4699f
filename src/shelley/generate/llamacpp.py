"""The fast CPU writer: an exported GGUF run by llama.cpp (``llama-cpp-python``) instead of transformers.

``LlamaCppWriter.generate`` takes the prompts and the ``GenerationConfig`` that ``generate_texts`` takes and
returns the continuations, so ``shelley write --engine llamacpp`` keeps the originality guard, the re-sampling
and the stop strings unchanged. Sampling maps onto llama.cpp's own: temperature (0 or do_sample false: greedy),
top-k, top-p, repetition penalty, and one seed per sample; min_new_tokens bans end-of-text for that many tokens
(llama.cpp's logit bias), as transformers does. no_repeat_ngram_size, which llama.cpp lacks, is named, not
dropped silently.

The scores are shaped by ``hf_sampling``, a logits processor that does what transformers does, in its order;
llama.cpp's own samplers differ in two ways that matter for long text (see there) and are left as no-ops.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from pathlib import Path

from shelley.config import GenerationConfig
from shelley.errors import ShelleyError
from shelley.generate.batch import SlotBatchWriter


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise ShelleyError(
            "--engine llamacpp needs llama-cpp-python: pip install 'shelley[llamacpp]' (or `make setup-llamacpp`)"
        ) from None
    return llama_cpp


def hf_sampling(gen: GenerationConfig):
    """A llama.cpp logits processor that shapes the scores as transformers' ``generate`` does for ``gen``: the
    repetition penalty over every token in the context, then temperature, top-k and top-p, in that order.

    llama.cpp's own samplers differ in two ways. Its repetition penalty sees only the tokens the current call
    sampled, at most 64 (the prompt never), so a scene written in chunks could repeat what the chunks before it
    said, which transformers' penalty over the whole context stops. And it cuts top-p before dividing by the
    temperature, so at 0.8 its nucleus is wider than transformers'. With this processor in front, llama.cpp's
    chain is set to no-ops (``NEUTRAL``) and only draws from what is left (greedy: takes the best)."""
    import numpy as np

    sample = gen.do_sample and gen.temperature > 0
    penalty = gen.repetition_penalty

    def apply(input_ids, scores):
        if penalty != 1.0 and len(input_ids):
            seen = np.unique(np.asarray(input_ids, dtype=np.intp))
            s = scores[seen]
            scores[seen] = np.where(s < 0, s * penalty, s / penalty)  # transformers' RepetitionPenaltyLogitsProcessor
        if not sample:
            return scores
        k = min(gen.top_k or len(scores), len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        values = scores[top] / gen.temperature
        if gen.top_p < 1.0:
            probs = np.exp(values - values.max())
            probs /= probs.sum()
            tail = np.cumsum(probs[::-1])[::-1]  # mass from this token down, as transformers' top-p
            drop = tail <= 1 - gen.top_p
            drop[0] = False  # the most likely token always stays
            values[drop] = -np.inf
        out = np.full_like(scores, -np.inf)
        out[top] = values
        return out

    return apply


def ban(token: int, *, once: bool):
    """A logits processor that bans ``token`` (end-of-text, for ``min_new_tokens``): for the next token only, or
    for every token of the call. Not llama.cpp's ``logit_bias``: given with a logits processor, llama-cpp-python
    0.3 drops both (``LogitsProcessorList.extend`` returns None)."""
    import numpy as np

    left = [True]

    def apply(_input_ids, scores):
        if left[0]:
            scores[token] = -np.inf
            left[0] = not once
        return scores

    return apply


# llama.cpp's own samplers as no-ops, behind ``hf_sampling``: top-k 0, top-p 1, min-p 0, typical 1, temperature
# 1 and penalty 1 leave the scores as they are; the last sampler draws (or, at temperature 0, takes the best).
NEUTRAL = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0}


def _chain(gen: GenerationConfig) -> dict:
    """llama.cpp's sampling arguments behind ``hf_sampling``: greedy (temperature 0) or a plain draw."""
    greedy = not gen.do_sample or gen.temperature == 0
    return NEUTRAL | {"temp": 0.0 if greedy else 1.0}


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
        chain = _chain(gen)
        out, self.token_counts = [], []
        for p in prompts:
            for s in range(gen.num_samples):
                kwargs = {k: v for k, v in chain.items() if k != "temp"} | {
                    "temperature": chain["temp"],
                    "max_tokens": gen.max_new_tokens,
                    "seed": gen.seed + s,
                    "stop": list(gen.stop) or None,
                }
                out.append(self._sample(p, kwargs, gen, on_text if not out else None))
        return out

    def _sample(self, prompt: str, kwargs: dict, gen: GenerationConfig, on_text) -> str:
        """One continuation: first ``min_new_tokens`` tokens with end-of-text banned, then the rest as usual."""
        llama_cpp = require_llama_cpp()
        text, left, count = "", kwargs["max_tokens"], 0
        first = min(gen.min_new_tokens, left)
        for n, banned in ((first, True), (left - first, False)):
            if n <= 0:
                continue
            shape = [ban(self.llm.token_eos(), once=False), hf_sampling(gen)] if banned else [hf_sampling(gen)]
            args = kwargs | {"max_tokens": n, "logits_processor": llama_cpp.LogitsProcessorList(shape)}
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
        self.gen = gen

    def continue_ids(self, ids, max_new, *, seed, ban_eos=False, on_token=None):
        llama_cpp = require_llama_cpp()
        eos = self.llm.token_eos()
        shape = [ban(eos, once=True), hf_sampling(self.gen)] if ban_eos else [hf_sampling(self.gen)]
        self.llm.set_seed(seed)
        out: list[int] = []
        stream = self.llm.generate(
            ids, reset=True, logits_processor=llama_cpp.LogitsProcessorList(shape), **_chain(self.gen)
        )
        for tok in stream:
            out.append(int(tok))
            if on_token:
                on_token(int(tok))
            if tok == eos or len(out) >= max_new:
                break
        return out


class LlamaCppBatchWriter(SlotBatchWriter):
    """``SlotBatchWriter``'s queue over llama.cpp: many readers at once on the exported GGUF.

    Every row is a sequence of one llama.cpp context with ``max_batch`` sequences (``n_seq_max``), each its own
    slot of ``row_context`` tokens in the KV cache (not unified: a row's attention reads its own slot only). A
    step decodes the last token of every running row in one ``llama_batch`` (on a CPU a batch of 50 tokens costs
    a few times one token, not 50 times).

    KV memory: ``max_batch * row_context`` tokens (SmolLM2-135M in f16: about 23 kB a token, 1.7 GB at 64 x
    1,152)."""

    def __init__(
        self, writer: LlamaCppWriter, tokenizer, *, max_batch: int = 64, chunk: int = 16, max_waiting: int = 64,
        row_context: int = 1152, threads: int | None = None, unified_kv: bool = False, start: bool = True,
    ) -> None:  # fmt: skip
        llama_cpp = require_llama_cpp()
        limit = min(row_context, writer.trained_context or row_context)
        super().__init__(
            None, tokenizer, max_batch=max_batch, chunk=chunk, max_waiting=max_waiting, start=False, context=limit
        )
        self.writer, self.lib = writer, llama_cpp
        params = llama_cpp.llama_context_default_params()
        # unified_kv: one KV buffer for every row; off (faster here): a slot of row_context tokens each
        params.n_ctx, params.n_seq_max, params.kv_unified = limit * max_batch, max_batch, unified_kv
        params.n_batch = params.n_ubatch = max(512, max_batch)
        params.n_threads = params.n_threads_batch = threads or os.cpu_count()
        self.ctx = llama_cpp.llama_init_from_model(writer.llm._model.model, params)
        if not self.ctx:
            raise ShelleyError(
                f"llama.cpp could not make a context of {max_batch} x {limit} tokens; lower --concurrency"
            )
        self.n_batch = params.n_batch
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.n_vocab = writer.llm.n_vocab()
        self.compact = not unified_kv
        self._slots(max_batch)
        atexit.register(self.close)  # a context left to the interpreter's teardown outlives its model
        if start:
            self.start()

    def close(self) -> None:
        """Stop the worker, then free the context (before the model it was made from: at exit too)."""
        self.stop()
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def _forget(self, slot: int, keep: int) -> None:
        self.lib.llama_memory_seq_rm(self.lib.llama_get_memory(self.ctx), slot, keep, -1)

    def _fill(self, items: list[tuple[int, int, int]]) -> None:
        for at in range(0, len(items), self.n_batch):
            self._decode(items[at : at + self.n_batch], logits=False)

    def _move(self, source: int, target: int) -> None:
        mem = self.lib.llama_get_memory(self.ctx)
        self.lib.llama_memory_seq_rm(mem, target, -1, -1)
        self.lib.llama_memory_seq_cp(mem, source, target, -1, -1)
        self.lib.llama_memory_seq_rm(mem, source, -1, -1)

    def _step(self, items: list[tuple[int, int, int]]):
        import torch

        self._decode(items, logits=True)
        return torch.from_numpy(self._all_logits(len(items)))  # read before the next decode overwrites them

    def _decode(self, items: list[tuple[int, int, int]], *, logits: bool) -> None:
        """One ``llama_decode`` of (slot, token, position) items; ``logits``: keep every item's next-token scores."""
        b = self.batch
        b.n_tokens = len(items)
        for i, (seq, token, pos) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        code = self.lib.llama_decode(self.ctx, b)
        if code != 0:
            raise ShelleyError(f"llama.cpp could not decode a batch of {len(items)} tokens (code {code})")

    def _all_logits(self, n: int):
        """The last decode's next-token scores, (n, vocabulary): llama.cpp keeps the rows asked for contiguous, in
        the batch's order (a view of its buffer, not a copy)."""
        import numpy as np

        return np.ctypeslib.as_array(self.lib.llama_get_logits(self.ctx), shape=(n, self.n_vocab))
