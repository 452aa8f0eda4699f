"""``shelley write``: generate continuations, check each against the corpus, re-sample the copies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shelley.config import GenerationConfig
from shelley.generate import generate_texts


def write(
    model,
    tokenizer,
    prompts: list[str],
    gen: GenerationConfig,
    *,
    index=None,
    original: bool = False,
    max_span: int = 12,
    tries: int = 5,
    on_note: Callable[[str], None] | None = None,
    streamer=None,
    engine=None,
) -> list[dict[str, Any]]:
    """One dict per prompt x sample: prompt, text, sample number, originality (when an index is given), tries.

    With ``original`` every sample whose longest copied span exceeds ``max_span`` words is drawn again (all
    such samples in one batch, a new seed each round) up to ``tries`` rounds in all. A sample that still
    copies too much keeps its least-copying draw and is flagged ``gave_up``. ``engine`` (a
    ``generate.llamacpp.LlamaCppWriter``) generates instead of ``model``; ``streamer`` then is a callback that
    receives the first sample's text as it comes.
    """
    note = on_note or (lambda _m: None)

    def sample(prompts: list[str], gen: GenerationConfig, **kw: Any) -> list[str]:
        if engine is not None:
            return engine.generate(prompts, gen, on_note=kw.get("on_note"), on_text=kw.get("streamer"))
        return generate_texts(model, tokenizer, prompts, gen, **kw)

    texts = sample(prompts, gen, on_note=note, streamer=streamer)
    n = gen.num_samples
    results = [
        {"prompt": prompts[i // n], "sample": i % n + 1, "text": t, "tries": 1, "gave_up": False}
        for i, t in enumerate(texts)
    ]
    if index is None:
        return results
    for r in results:
        # The continuation alone: words the user typed in the prompt are not the model's copying.
        r["originality"] = index.check(r["text"])
    if not original:
        return results
    for attempt in range(2, tries + 1):
        bad = [r for r in results if r["originality"]["longest_span"] > max_span]
        if not bad:
            break
        note(f"re-sampling {len(bad)} sample(s) that copy more than {max_span} words (try {attempt} of {tries})")
        # One batch of the offending prompts, one sample each, with a seed no earlier round used.
        redo = gen.model_copy(update={"num_samples": 1, "seed": gen.seed + 7919 * (attempt - 1)})
        new = sample([r["prompt"] for r in bad], redo, on_note=lambda _m: None)
        for r, t in zip(bad, new, strict=True):
            check = index.check(t)
            r["tries"] = attempt
            if check["longest_span"] < r["originality"]["longest_span"]:
                r["text"], r["originality"] = t, check
    for r in results:
        if r["originality"]["longest_span"] > max_span:
            r["gave_up"] = True
            note(
                f"gave up on prompt {r['prompt']!r} sample {r['sample']} after {tries} tries: it still copies "
                f"{r['originality']['longest_span']} words; raise --tries or the temperature"
            )
    return results
