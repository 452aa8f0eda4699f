"""One stream of tokens on shelley's own decoder (``models.llama_decode``): the scene writer's engine, the REPL's
replies and ``generate_texts``' single sample where the decoder runs the model. It imports nothing of
``shelley.generate`` but the sampler, so both the package and its scene writer can use it."""

from __future__ import annotations

from shelley.config import GenerationConfig


def one_stream(model, tokenizer, gen: GenerationConfig) -> DecoderEngine | None:
    """A ``DecoderEngine`` over ``model`` where the decoder runs it (a Llama-architecture model on the CPU) and
    ``RowSampling`` draws ``gen``'s settings (not ``no_repeat_ngram_size``, a generate() processor); else None."""
    from shelley.models.llama_decode import LlamaDecoder, unsupported

    if gen.no_repeat_ngram_size or unsupported(model) is not None:
        return None
    return DecoderEngine(LlamaDecoder(model), tokenizer, gen)


class DecoderEngine:
    """``continue_ids`` over ``models.llama_decode.LlamaDecoder``: a Llama-architecture transformers model's own
    weights, one token at a time without ``generate``'s machinery (on 2 cores a scene takes about a quarter less
    time than through ``generate`` in float32, a quarter to a third less with ``--int8``; see ``docs/results``).
    The decoder's cache is kept between calls and rolled back to the prefix the next call shares, as
    ``TransformersEngine`` does with transformers' cache.

    Each call draws with ``sampling.RowSampling`` from a generator seeded with its ``seed``: the same repetition
    penalty, temperature, top-k and top-p as ``TransformersEngine``, and the same draws, since both take k
    exponentials a step from a generator seeded alike (a new ``torch.Generator`` here, torch's global one there).
    So float32 weights write the same scene for a seed on either engine; under int8 weights the two round bf16
    differently and a near tie can go the other way. ``gen`` may be replaced between calls (the REPL's /temp)."""

    def __init__(self, decoder, tokenizer, gen: GenerationConfig) -> None:
        self.decoder, self.gen = decoder, gen
        self.position_limit = decoder.position_limit
        self.eos = tokenizer.eos_token_id
        self._cached: list[int] = []  # the ids whose keys and values the decoder holds, from position 0

    def continue_ids(
        self, ids, max_new, *, seed, ban_eos=False, on_token=None, min_new: int = 0, stop_ids=(), until=None
    ):  # fmt: skip
        """``min_new``: end-of-text banned for that many new tokens (``ban_eos``: for one). ``stop_ids``: ids that
        end the call as end-of-text does (kept as its last id). ``until(new)``: asked after every token; True ends
        the call (the REPL's stop strings)."""
        import torch

        from shelley.generate.sampling import RowSampling, SampledRow

        keep = min(common_prefix(self._cached, ids), len(ids) - 1)  # the last id is fed to get the next logits
        logits = self.decoder.forward(ids[keep:], keep)
        self._cached = list(ids)
        generator = torch.Generator().manual_seed(int(seed))
        row = SampledRow(list(ids), self.gen, generator, min_new=max(min_new, 1 if ban_eos else 0))
        sampler = RowSampling([row], len(ids), self.eos)
        context = torch.tensor([list(ids) + [0] * max_new])  # the penalty's view: grows into the zeros
        ends = {self.eos, *stop_ids}
        new: list[int] = []
        while True:
            token = int(sampler.draw(context[:, : len(ids) + len(new)], logits[None])[0])
            context[0, len(ids) + len(new)] = token
            new.append(token)
            if on_token:
                on_token(token)
            if token in ends or len(new) >= max_new or (until is not None and until(new)):
                return new
            logits = self.decoder.forward([token], len(self._cached))
            self._cached.append(token)


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens ``a`` and ``b`` share from the start."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
