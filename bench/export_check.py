"""Proof that an exported GGUF is the model shelley saved, on a real run (the default `shelley run` model):

    python -m bench.export_check RUN [--tokens 2000] [--name NAME]

For f16, q8_0 and q4_k_m it exports the run's model and reports the file size; then it measures
- transformers loading the f16 file (``gguf_file=``): the largest logit difference from the saved model;
- llama.cpp running the f16 file: the greedy continuation (50 tokens) of the five eval prompts, token for token
  against transformers with the saved model, and top-1 agreement on ``--tokens`` validation tokens;
- the perplexity of each file in llama.cpp on the same tokens (same 512-token windows), beside the saved
  model's in transformers;
- both engines on the eval workload (5 prompts x 4 samples x 120 tokens): tokens/s, and single-stream time
  to the first token.
The figures go to docs/results/<NAME>.json (``bench.results``), with the commit and the CPU.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

WINDOW = 512


def greedy_ids(model, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens from a transformers model, end-of-text not special (llama.cpp's plain loop)."""
    import torch

    out, past, step = [], None, torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            res = model(step, past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = int(res.logits[0, -1].argmax())
            out.append(nxt)
            step = torch.tensor([[nxt]])
    return out


def llamacpp_greedy(writer, ids: list[int], n: int) -> list[int]:
    writer.llm.reset()
    out = []
    for token in writer.llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == n:
            break
    return out


def _windows(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + WINDOW] for i in range(0, len(ids) - 1, WINDOW) if len(ids[i : i + WINDOW]) > 1]


def _nll(logits: np.ndarray, ids: list[int]) -> tuple[float, int]:
    """Summed next-token NLL over a window and the number of predicted tokens."""
    z = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].sum()), len(ids) - 1


def _hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def measure(run_dir: Path, n_tokens: int = 2000) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from shelley.eval.evaluate import cached_stream
    from shelley.export import export_run
    from shelley.generate.llamacpp import LlamaCppWriter
    from shelley.generate.load import load_for_generation
    from shelley.run import Run

    run = Run.open(run_dir)
    cfg = run.config()
    files = {q: export_run(run, "gguf", quant=q, overwrite=True) for q in ("f16", "q8_0", "q4_k_m")}
    out: dict[str, Any] = {"sizes_mb": {q: round(p.stat().st_size / 1e6, 1) for q, p in files.items()}}
    loaded = load_for_generation(str(run.root))  # the saved model in fp32 (an adapter merged), with its tokenizer
    saved, tok = loaded.model.eval(), loaded.tokenizer
    ids = [int(x) for x in np.asarray(cached_stream(run))[: n_tokens + 1]]
    windows = _windows(ids)
    # transformers, f16 file vs the saved model
    hf16 = AutoModelForCausalLM.from_pretrained(
        str(files["f16"].parent), gguf_file=files["f16"].name, dtype=torch.float32
    ).eval()
    out["transformers_f16_max_logit_diff"] = max(
        float(np.abs(_hf_logits(hf16, w) - _hf_logits(saved, w)).max()) for w in windows[:2]
    )
    del hf16
    # llama.cpp: greedy text, top-1 agreement, perplexity per quant
    ref = {i: _hf_logits(saved, w) for i, w in enumerate(windows)}
    nll_ref = [_nll(ref[i], w) for i, w in enumerate(windows)]
    out["perplexity"] = {"saved (transformers)": math.exp(sum(a for a, _ in nll_ref) / sum(b for _, b in nll_ref))}
    for quant, path in files.items():
        writer = LlamaCppWriter(path, n_ctx=WINDOW + 64, logits=True)
        nll, agree, total = [], 0, 0
        for i, w in enumerate(windows):
            lg = writer.logits(w)
            nll.append(_nll(lg, w))
            agree += int((lg[:-1].argmax(-1) == ref[i][:-1].argmax(-1)).sum())
            total += len(w) - 1
        out["perplexity"][f"{quant} (llama.cpp)"] = math.exp(sum(a for a, _ in nll) / sum(b for _, b in nll))
        out.setdefault("top1_agreement_vs_saved", {})[quant] = agree / total
        if quant == "f16":
            same = []
            for prompt in cfg.eval.prompts:
                p_ids = tok(prompt, add_special_tokens=False).input_ids
                same.append(greedy_ids(saved, p_ids, 50) == llamacpp_greedy(writer, p_ids, 50))
            out["greedy_50_tokens_identical"] = f"{sum(same)}/{len(same)} prompts"
        del writer
    out["tokens_scored"] = sum(b for _, b in nll_ref)
    gguf_paths = {q: files[q] for q in ("f16", "q8_0")}
    out["engines"] = _speed(loaded, gguf_paths, cfg)
    return out


def _speed(loaded, gguf_paths, cfg) -> dict[str, Any]:
    """The eval workload on both engines: tokens/s, and the time to the first token of one stream."""
    from shelley.generate import generate_texts
    from shelley.generate.llamacpp import LlamaCppWriter

    gen = cfg.generation.model_copy(update={"num_samples": 4, "max_new_tokens": 120, "min_new_tokens": 120})
    prompts = list(cfg.eval.prompts)
    tok = loaded.tokenizer
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    texts = generate_texts(loaded.model, tok, prompts, gen)
    dt = time.perf_counter() - t0
    n = sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts)
    res["transformers"] = {"tokens": n, "seconds": round(dt, 1), "tokens_per_s": round(n / dt, 1)}
    res["transformers"]["first_token_s"] = _first_token_hf(loaded.model, tok, prompts[0], gen)
    t0 = time.perf_counter()
    one = generate_texts(loaded.model, tok, prompts[:1], gen.model_copy(update={"num_samples": 1}))
    single = len(tok(one[0], add_special_tokens=False).input_ids) / (time.perf_counter() - t0)
    res["transformers"]["single_stream_tokens_per_s"] = round(single, 1)
    for quant, path in gguf_paths.items():
        writer = LlamaCppWriter(path)
        t0 = time.perf_counter()
        writer.generate(prompts, gen)
        dt = time.perf_counter() - t0
        n = sum(writer.token_counts)
        key = f"llamacpp {quant}"
        res[key] = {"tokens": n, "seconds": round(dt, 1), "tokens_per_s": round(n / dt, 1)}
        res[key]["first_token_s"] = _first_token_llamacpp(writer, prompts[0], gen)
        # one stream of 120 tokens, as `shelley write` with one sample runs
        t0 = time.perf_counter()
        writer.generate([prompts[0]], gen.model_copy(update={"num_samples": 1}))
        res[key]["single_stream_tokens_per_s"] = round(writer.token_counts[0] / (time.perf_counter() - t0), 1)
        del writer
    return res


def _first_token_llamacpp(writer, prompt: str, gen) -> float | None:
    """Seconds from the call to the first streamed piece of text, one stream."""
    t0, first = time.perf_counter(), []

    def seen(_text: str) -> None:
        if not first:
            first.append(time.perf_counter() - t0)

    writer.generate([prompt], gen.model_copy(update={"num_samples": 1, "max_new_tokens": 8}), on_text=seen)
    return round(first[0], 3) if first else None


def _first_token_hf(model, tok, prompt: str, gen) -> float:
    """Seconds from the call to the first streamed piece of text, single stream, as `shelley write` streams."""
    import threading

    from transformers import TextIteratorStreamer

    from shelley.generate import generate_texts

    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    one = gen.model_copy(update={"num_samples": 1, "max_new_tokens": 8, "min_new_tokens": 8})
    t0 = time.perf_counter()
    thread = threading.Thread(target=generate_texts, args=(model, tok, [prompt], one), kwargs={"streamer": streamer})
    thread.start()
    first = None
    for piece in streamer:
        if piece and first is None:
            first = time.perf_counter() - t0
    thread.join()
    return round(first or float("nan"), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--name", default="export_default_run")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    from bench.results import record_export

    figures = measure(args.run, args.tokens)
    print(figures)
    print(record_export(figures, args.name, args.note))


if __name__ == "__main__":
    main()
