"""Would speculative decoding make one scene faster? What a check of drafted tokens costs, and how often a cheap
draft would be accepted:

    python -m bench.speculation RUN [--gguf FILE] [--scenes 5]

Speculative decoding drafts the next tokens cheaply and checks them in one call of the model. With sampling, a
drafted token is kept with the probability the model gives it (after the run's repetition penalty,
temperature, top-k and top-p), so a one-token draft pays when (1 + acceptance) x the cost of one token beats
the cost of a call of two. Two parts:

* **Cost** (``--gguf``: the run's q8_0 export by default): llama.cpp's milliseconds for a call of 1, 2, 4 and 8
  tokens after a short prompt, and 1,200 tokens decoded one call at a time (the floor of any one-stream loop on
  that engine: a 1,000-word scene draws about 1,200).
* **Acceptance**: over the run's own fine-tuned scenes (``scene-texts.json`` from ``shelley eval --scenes``), the
  mean probability the model gives to: its own most likely token (the best any one-token draft can do), a
  trigram draft from the training split (the most frequent next token after the last two), and a draft looked
  up in the text so far (the token after the last earlier match of the last 1-3 tokens: prompt lookup).

Prints the figures and the speed-up each draft bounds. Run it alone on the machine: it times.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path


def _llama(gguf: Path, threads: int | None):
    """llama.cpp on every core for one token and for a batch, as ``LlamaCppWriter`` runs it (llama-cpp-python's
    own default gives one token half the cores)."""
    import os

    import llama_cpp

    threads = threads or os.cpu_count()
    return llama_cpp.Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)


def call_costs(
    gguf: Path, sizes=(1, 2, 4, 8), tokens: int = 240, rounds: int = 3, threads: int | None = None
) -> dict[int, float]:  # fmt: skip
    """Milliseconds per llama.cpp call of each size after a 20-token prompt: the median of ``rounds`` rounds that
    alternate the sizes, after a warm-up (the first calls of a fresh context are slower)."""
    import statistics

    llm = _llama(gguf, threads)
    prompt = llm.tokenize(b"It was on a dreary night of November that I beheld the accomplishment of my toils.")

    def time_calls(k: int) -> float:
        llm.reset()
        llm.eval(prompt)
        t0, n = time.perf_counter(), 0
        while n < tokens:
            llm.eval([300 + (n + j) % 500 for j in range(k)])
            n += k
        return (time.perf_counter() - t0) / (n // k) * 1000

    time_calls(1)  # warm-up
    times: dict[int, list[float]] = {k: [] for k in sizes}
    for _ in range(rounds):
        for k in sizes:
            times[k].append(time_calls(k))
    return {k: statistics.median(v) for k, v in times.items()}


def floor_seconds(gguf: Path, tokens: int = 1200, threads: int | None = None) -> float:
    """Seconds for ``tokens`` greedy tokens one call at a time: llama.cpp's own loop, nothing of shelley's."""
    import llama_cpp
    import numpy as np

    llm = _llama(gguf, threads)
    ids = llm.tokenize(b"It was on a dreary night of November that I beheld the accomplishment of my toils.")
    llm.eval(ids)
    vocab, token = llm.n_vocab(), ids[-1]
    t0 = time.perf_counter()
    for _ in range(tokens):
        llm.eval([token])
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(vocab,))
        token = int(logits.argmax())
    return time.perf_counter() - t0


def acceptance(run_dir: Path, scenes: int = 5, positions: int = 1024) -> dict[str, float]:
    """Mean probability of each draft's token under the run's sampling, over the run's fine-tuned scenes."""
    import torch
    from datasets import load_from_disk
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from shelley.generate.load import load_for_generation
    from shelley.run import Run

    run = Run.open(run_dir)
    gen = run.config().generation
    loaded = load_for_generation(run_dir)
    model, tok = loaded.model.eval(), loaded.tokenizer
    shape = LogitsProcessorList(
        [RepetitionPenaltyLogitsProcessor(gen.repetition_penalty), TemperatureLogitsWarper(gen.temperature)]
        + ([TopKLogitsWarper(gen.top_k)] if gen.top_k else [])
        + ([TopPLogitsWarper(gen.top_p)] if gen.top_p < 1 else [])
    )
    trigrams: dict[tuple[int, int], collections.Counter] = collections.defaultdict(collections.Counter)
    for text in load_from_disk(str(run.data_dir))["train"]["text"]:
        ids = tok(text, add_special_tokens=False).input_ids
        for a, b, c in zip(ids, ids[1:], ids[2:], strict=False):
            trigrams[(a, b)][c] += 1
    best_next = {k: c.most_common(1)[0][0] for k, c in trigrams.items()}

    def lookup(ctx: list[int]) -> int | None:
        for n in (3, 2, 1):
            tail = ctx[-n:]
            for j in range(len(ctx) - n - 1, -1, -1):
                if ctx[j : j + n] == tail:
                    return ctx[j + n]
        return None

    sums, count = collections.Counter(), 0
    texts = json.loads(run.scene_texts.read_text(encoding="utf-8"))["texts"]["finetuned"][:scenes]
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids[:positions]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        for t in range(16, len(ids) - 1):
            ctx = ids[: t + 1]
            probs = shape(torch.tensor([ctx]), logits[t : t + 1].clone()).softmax(-1)[0]
            sums["best"] += float(probs.max())
            for name, draft in (("trigram", best_next.get((ctx[-2], ctx[-1]))), ("lookup", lookup(ctx))):
                sums[name] += float(probs[draft]) if draft is not None else 0.0
            count += 1
    return {k: v / count for k, v in sums.items()} | {"positions": count}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run dir with an export and `shelley eval --scenes` texts")
    ap.add_argument("--gguf", type=Path, default=None, help="the GGUF to time (default: the run's q8_0 export)")
    ap.add_argument("--scenes", type=int, default=5)
    args = ap.parse_args(argv)
    from shelley.run import Run

    gguf = args.gguf or Run.open(args.run).gguf("q8_0")
    costs = call_costs(gguf)
    print("llama.cpp ms per call of k tokens:", {k: round(v, 1) for k, v in costs.items()})
    floor = floor_seconds(gguf)
    print(f"1,200 tokens one call at a time: {floor:.1f} s ({1200 / floor:.1f} tokens/s)")
    rates = acceptance(args.run, args.scenes)
    print(f"mean acceptance of a one-token draft over {rates.pop('positions')} positions:")
    for name, a in rates.items():
        bound = (1 + a) * costs[1] / costs[2]
        print(f"  {name:8s} {a:.3f}: at best {bound:.2f}x the tokens a second of one token a call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
