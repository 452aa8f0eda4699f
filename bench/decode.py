"""How fast one stream decodes on CPU, through transformers and through shelley's own decoder, and what int8
weights cost in quality:

    python -m bench.decode RUN [--contexts 128,512,1000] [--tokens 64] [--rounds 3] [--quality]

For fp32 weights and int8 weights (``--int8``), at each context length: a prompt of that many validation
tokens is prefilled, then ``--tokens`` tokens are decoded greedily one at a time, and the milliseconds per
decoded token are printed (prefill not counted), for transformers' forward with its cache and for
``models.llama_decode.LlamaDecoder`` (Llama-architecture models), alternated ``--rounds`` times so both see the
same machine. ``--quality``: the validation split's bits per byte with fp32 and with int8 weights, scored as
``shelley eval`` scores it. Run it alone on the machine: it times.
"""

from __future__ import annotations

import argparse
import json
import time


def decode_ms(model, prompt, tokens: int, cache) -> float:
    """Milliseconds per token of ``tokens`` greedy steps after prefilling ``prompt`` (1, T) into ``cache``."""
    import torch

    from shelley.models.decode import cache_arg

    kw = {cache_arg(): cache, "use_cache": True, "logits_to_keep": 1}  # the name this transformers gives the cache
    with torch.inference_mode():
        out = model(input_ids=prompt, **kw)
        nxt = out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(tokens):
            out = model(input_ids=nxt, **kw)
            nxt = out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - t0) / tokens * 1000


def decoder_ms(decoder, prompt: list[int], tokens: int) -> float:
    """``decode_ms`` through ``LlamaDecoder``: prefill ``prompt``, then ``tokens`` greedy steps."""
    nxt = int(decoder.forward(prompt, 0).argmax())
    t0 = time.perf_counter()
    for p in range(len(prompt), len(prompt) + tokens):
        nxt = int(decoder.forward([nxt], p).argmax())
    return (time.perf_counter() - t0) / tokens * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--contexts", default="128,512,1000")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quality", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from transformers import DynamicCache

    from shelley.eval.evaluate import cached_stream, validation_perplexity
    from shelley.generate.load import load_for_generation
    from shelley.models.decode import int8_weights
    from shelley.models.llama_decode import LlamaDecoder, unsupported
    from shelley.run import Run
    from shelley.runtime import cpu_info

    run = Run.find(args.run)
    cfg = run.config()
    loaded = load_for_generation(args.run)
    model, tok = loaded.model.eval(), loaded.tokenizer
    stream = cached_stream(run)
    contexts = [int(c) for c in args.contexts.split(",")]
    report: dict = {"run": args.run, "cpu": cpu_info().get("model name"), "threads": torch.get_num_threads()}
    if args.quality:
        report["fp32"] = validation_perplexity(model, tok, stream, cfg)
    rows = []
    for label in ("fp32 weights", "int8 weights, bf16 activations"):
        if label.startswith("int8"):
            int8_weights(model)
        decoder = LlamaDecoder(model) if unsupported(model) is None else None
        for n in contexts:
            prompt = stream[:n]
            times: dict[str, list[float]] = {"transformers": [], "shelley decoder": []}
            for _ in range(args.rounds):
                ids = torch.as_tensor(prompt, dtype=torch.long)[None]
                times["transformers"].append(decode_ms(model, ids, args.tokens, DynamicCache(config=model.config)))
                if decoder is not None:
                    times["shelley decoder"].append(decoder_ms(decoder, [int(t) for t in prompt], args.tokens))
            for engine, ms in times.items():
                if ms:
                    median = sorted(ms)[len(ms) // 2]
                    row = {"setup": label, "engine": engine, "context": n, "ms_per_token": median}
                    rows.append(row | {"each": [round(x, 2) for x in ms]})
                    print(json.dumps(rows[-1]), flush=True)
    report["decode"] = rows
    if args.quality:
        report["int8"] = validation_perplexity(model, tok, stream, cfg)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
