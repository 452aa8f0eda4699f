"""Text generation shared by training samples, evaluation, ``shelley write`` and the chat REPL.

Every prompt x sample goes through one left-padded batch, so 5 prompts x 4 samples is one ``generate`` call
with a KV cache instead of twenty. Left padding matters: a decoder continues from the last position, so the
prompts must all end at the same column.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from shelley.config import GenerationConfig
from shelley.errors import ShelleyError


def check_generation(gen: GenerationConfig) -> None:
    """Reject settings HF generate would misread; the config types catch the rest."""
    if gen.max_new_tokens <= 0:
        raise ShelleyError(f"max new tokens must be at least 1 (got {gen.max_new_tokens}); raise --max-new-tokens")
    if gen.temperature < 0:
        raise ShelleyError(f"temperature must be >= 0 (got {gen.temperature}); use 0 for greedy, ~0.8 for sampling")
    if not 0 < gen.top_p <= 1:
        raise ShelleyError(f"top-p must be in (0, 1] (got {gen.top_p}); 0.95 is a good default")


def context_window(model) -> int:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_len"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def fit_prompts(tokenizer, prompts: list[str], max_prompt_tokens: int) -> tuple[list[list[int]], list[str]]:
    """Token ids per prompt and warnings. Too-long prompts keep their last tokens (the ones the model needs
    to continue); an empty prompt starts from the BOS (or EOS) token, i.e. unconditional generation. A model
    that expects a BOS token (``models.bos``) gets it in front of every prompt."""
    from shelley.models.bos import bos_prefix

    notes = []
    out = []
    prefix = bos_prefix(tokenizer)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    room = max_prompt_tokens - len(prefix)
    for i, p in enumerate(prompts):
        ids = tokenizer(p, add_special_tokens=False)["input_ids"] if p else []
        if not ids:
            notes.append(f"prompt {i + 1} is empty: generating unconditionally from the start token")
            out.append(prefix or [start])
            continue
        if len(ids) > room:
            notes.append(
                f"prompt {i + 1} has {len(ids)} tokens, more than the {room} that fit the context "
                f"with max new tokens; kept its last {room}"
            )
            ids = ids[-room:]
        out.append(prefix + ids)
    return out, notes


def cut_at_stop(text: str, stops: list[str]) -> str:
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def generate_texts(
    model,
    tokenizer,
    prompts: list[str],
    gen: GenerationConfig,
    *,
    seed: int | None = None,
    on_note: Callable[[str], None] | None = None,
    streamer=None,
    extra_stop_ids: list[int] | None = None,
    heads: int | None = None,
    stream=None,
) -> list[str] | tuple[list[str], list[str]]:
    """Continue every prompt ``gen.num_samples`` times in one left-padded batch; returns the continuations
    only, in order prompt 1 sample 1..n, prompt 2 sample 1..n, ...  ``temperature 0`` or ``do_sample False``
    decodes greedily. ``extra_stop_ids`` are token ids that end a sample like EOS.

    A single sample runs on the one-stream decoder where it runs the model (``stream.one_stream``): ``stream``,
    a ``stream.DecoderEngine`` the caller keeps between calls (the REPL: its cache holds the story so far), else
    one made for this call.

    ``heads``: also return each continuation's first ``heads`` tokens, decoded on their own: (texts, heads).
    With ``min_new_tokens`` at least ``heads`` these are samples of ``heads`` tokens with the same settings,
    since each token depends only on the ones before it."""
    import torch

    check_generation(gen)
    window = context_window(model)
    max_new = min(gen.max_new_tokens, window - 1)
    if max_new < gen.max_new_tokens and on_note:
        on_note(f"max new tokens clamped to {max_new}, the model's context is {window} tokens")
    ids, notes = fit_prompts(tokenizer, prompts, window - max_new)
    for n in notes:
        (on_note or (lambda m: warnings.warn(m, stacklevel=2)))(n)
    rows = [x for x in ids for _ in range(gen.num_samples)]
    if len(rows) == 1 and heads is None:
        from shelley.generate.stream import one_stream

        # One stream on a model the one-stream decoder runs: the same draws without generate's machinery.
        if (engine := stream or one_stream(model, tokenizer, gen)) is not None:
            seed = gen.seed if seed is None else seed
            return [stream_text(engine, tokenizer, rows[0], gen, max_new, seed=seed, streamer=streamer,
                                stop_ids=extra_stop_ids or [])]  # fmt: skip
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    device = next(model.parameters()).device
    torch.manual_seed(gen.seed if seed is None else seed)
    kwargs = {
        "max_new_tokens": max_new,
        "min_new_tokens": min(gen.min_new_tokens, max_new) or None,
        "pad_token_id": pad_id,
        # Extra ids end a sample like EOS does (the chat REPL stops when the model opens a new user turn).
        "eos_token_id": [tokenizer.eos_token_id, *(extra_stop_ids or [])] if extra_stop_ids else tokenizer.eos_token_id,
        **sampling_kwargs(gen, tokenizer),
    }
    if streamer is not None:
        kwargs["streamer"] = streamer
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
    model.train(was_training)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    # A batch runs until every row stops, so rows that met a stop string early have text after it.
    texts = [cut_at_stop(t, gen.stop) for t in texts]
    if heads is None:
        return texts
    firsts = tokenizer.batch_decode(out[:, width : width + heads], skip_special_tokens=True)
    return texts, [cut_at_stop(t, gen.stop) for t in firsts]


def stream_text(
    engine, tokenizer, ids: list[int], gen: GenerationConfig, max_new: int, *, seed: int, streamer=None,
    stop_ids: list[int] | None = None,
) -> str:  # fmt: skip
    """One continuation of ``ids`` through a ``stream.DecoderEngine``, as ``generate_texts`` writes one row: at most
    ``max_new`` tokens, end-of-text banned for ``gen.min_new_tokens``, ended by end-of-text, a ``stop_ids`` id or a
    stop string, and cut at the stop string. ``streamer`` gets what generate gives it: the prompt, each token, end."""
    import torch

    def until(new: list[int]) -> bool:
        text = tokenizer.decode(new, skip_special_tokens=True)
        return any(s and s in text for s in gen.stop)

    if streamer is not None:
        streamer.put(torch.tensor([ids]))
    engine.gen = gen
    new = engine.continue_ids(
        ids, max_new, seed=seed, min_new=min(gen.min_new_tokens, max_new), stop_ids=stop_ids or [],
        until=until if gen.stop else None,
        on_token=(lambda t: streamer.put(torch.tensor([t]))) if streamer is not None else None,
    )  # fmt: skip
    if streamer is not None:
        streamer.end()
    return cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), gen.stop)


def sampling_kwargs(gen: GenerationConfig, tokenizer) -> dict:
    """``generate()`` keyword arguments for the sampling settings of ``gen``: shared by batched samples and
    the scene writer, so both draw from the same distribution."""
    sample = gen.do_sample and gen.temperature > 0
    kwargs: dict = {"do_sample": sample, "repetition_penalty": gen.repetition_penalty}
    if sample and gen.top_k:
        # Temperature, top-k and top-p in one processor over the k best tokens: the same scores HF's three
        # warpers produce (same order, after the repetition penalty), without their full-vocabulary sort. It
        # also draws the token (Gumbel-max over those k), so generate() only takes the argmax: HF's sampler
        # would draw one exponential per vocabulary entry per row per step to pick among k candidates.
        from transformers import LogitsProcessorList

        draw = _top_k_top_p(gen.temperature, gen.top_k, gen.top_p, draw=True)
        kwargs |= {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
        kwargs["logits_processor"] = LogitsProcessorList([draw])
    elif sample:
        kwargs |= {"temperature": gen.temperature, "top_k": None, "top_p": gen.top_p}
    else:
        kwargs |= {"temperature": None, "top_k": None, "top_p": None}
    if gen.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = gen.no_repeat_ngram_size
    if gen.stop:
        kwargs |= {"stop_strings": list(gen.stop), "tokenizer": tokenizer}
    return kwargs


def _top_k_top_p(temperature: float, top_k: int, top_p: float, *, draw: bool = False):
    """A logits processor equal to HF's ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and ``TopPLogitsWarper``
    applied in that order, computed on the ``top_k`` best scores only.

    HF's top-p sorts the whole vocabulary on every decoding step even when top-k already left 50 candidates:
    with SmolLM2's 49k vocabulary and 40 rows, temperature + top-k + top-p took about 84 ms a step on 2 CPU cores
    next to a ~200 ms forward pass. Dividing by the temperature does not change which scores are the top k, so
    the k best are found first and only they are scaled, sorted and cut; the output is the same tensor (the
    kept tokens' scaled scores, -inf elsewhere). One difference: a tie with the k-th score keeps k tokens here
    where HF keeps every tied one.

    ``draw``: also add Gumbel(0, 1) noise to the kept scores, so that their argmax is a draw from the softmax of
    the kept scores, the distribution HF's sampler draws from (not the same draw for a seed). HF's
    ``torch.multinomial`` over the full vocabulary draws 49k exponentials per row: about 30 ms of a ~190 ms step
    for 25 rows on 2 CPU cores, to choose among at most ``top_k`` tokens."""
    import torch
    from transformers import LogitsProcessor

    class TopKTopP(LogitsProcessor):
        def __call__(self, input_ids, scores):
            k = min(top_k, scores.shape[-1])
            values, indices = scores.topk(k, dim=-1)  # (B, k), descending
            values = values / temperature
            if top_p < 1.0:
                probs = values.softmax(dim=-1)
                # HF drops a token when the mass of it and every less likely token is at most 1 - top_p, and
                # always keeps the most likely one.
                tail = probs.flip(-1).cumsum(-1).flip(-1)  # (B, k): mass from this token down
                drop = tail <= 1 - top_p
                drop[:, 0] = False
                values = values.masked_fill(drop, -float("inf"))
            if draw:
                # + Gumbel(0, 1). Clamped so a draw of exactly 0 cannot turn a dropped token's -inf into NaN,
                # which argmax would pick.
                noise = torch.empty_like(values).exponential_().clamp_min_(torch.finfo(values.dtype).tiny)
                values = values - noise.log()
            return torch.full_like(scores, -float("inf")).scatter_(-1, indices, values)

    return TopKTopP()
