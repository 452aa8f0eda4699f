"""Drawing the next token for rows that each have their own settings and seed: the batchers and the one-stream
decoder share it, so a seed draws the same way on every engine that uses it."""

from __future__ import annotations

from dataclasses import dataclass, field

from shelley.config import GenerationConfig


@dataclass
class SampledRow:
    """What ``RowSampling`` reads of a row (``batch._Row`` carries the same fields and its queue)."""

    ids: list[int]  # the context: prompt, then what the row has written so far
    gen: GenerationConfig
    generator: object  # torch.Generator seeded with the request's seed
    min_new: int = 0  # end-of-text banned until this many tokens are written
    written: list[int] = field(default_factory=list)  # tokens written before the current call


class RowSampling:
    """generate()'s logits processor for a batch of rows with their own settings: each row's repetition penalty
    over its own tokens, end-of-text banned before its ``min_new``, temperature, top-k, top-p, and a Gumbel draw
    from its own generator (so the argmax generate takes is that row's sample). Greedy rows take their best.
    The batch is shaped at once; only the draws go row by row, each row drawing exactly its own k numbers, so a
    row's generator advances the same way whichever rows share its batch."""

    def __init__(self, rows: list[SampledRow], width: int, eos: int) -> None:
        import torch

        self.rows, self.width, self.eos = rows, width, eos
        self.pads = torch.tensor([width - len(r.ids) for r in rows])
        self.penalty = torch.tensor([[r.gen.repetition_penalty] for r in rows])
        self.greedy = [not r.gen.do_sample or r.gen.temperature == 0 for r in rows]

    def __call__(self, input_ids, scores):
        """generate()'s view: every row's drawn token at 0, the rest at -inf (generate takes the argmax)."""
        import torch

        out = torch.full(scores.shape, -float("inf"))
        drawn = self.draw(input_ids, scores)
        out[torch.arange(len(drawn)), drawn] = 0.0
        return out

    def draw(self, input_ids, scores):
        """The token each row draws, a (batch,) tensor. Work on the whole vocabulary is kept to what needs it:
        the penalty touches only a row's own tokens and the draw only its top k (at 50 rows x 49k tokens this
        is a few ms a step, where penalising through full-width masks took 40)."""
        import torch

        batch, vocab = scores.shape
        step = input_ids.shape[1] - self.width
        # Padding goes to a column past the vocabulary, so the gather/scatter below never touches a real token.
        padding = torch.arange(input_ids.shape[1])[None, :] < self.pads[:, None]
        s = torch.cat([scores.float(), torch.zeros(batch, 1)], dim=1)
        if bool((self.penalty != 1.0).any()):
            own = input_ids.masked_fill(padding, vocab)
            hit = s.gather(1, own)  # a token seen twice gets the same penalised value twice: scatter is safe
            s.scatter_(1, own, torch.where(hit < 0, hit * self.penalty, hit / self.penalty))
        s = s[:, :vocab]
        banned = torch.tensor([len(r.written) + step < r.min_new for r in self.rows])
        s[banned, self.eos] = -float("inf")
        greedy = [b for b in range(batch) if self.greedy[b]]
        sampled = [b for b in range(batch) if not self.greedy[b]]
        drawn = torch.empty(batch, dtype=torch.long)
        if greedy:
            drawn[greedy] = s[greedy].argmax(-1)
        if not sampled:
            return drawn
        gens = [self.rows[b].gen for b in sampled]
        ks = [min(g.top_k or vocab, vocab) for g in gens]
        values, indices = (s if len(sampled) == batch else s[sampled]).topk(max(ks), dim=-1)  # (n, k) descending
        beyond = torch.arange(values.shape[1])[None, :] >= torch.tensor(ks)[:, None]
        values = values.masked_fill(beyond, -float("inf")) / torch.tensor([[g.temperature] for g in gens])
        top_p = torch.tensor([[g.top_p] for g in gens])
        # transformers' top-p: drop a token when it and every less likely one hold at most 1 - top_p
        tail = values.softmax(-1).flip(-1).cumsum(-1).flip(-1)
        drop = (tail <= 1 - top_p) & (top_p < 1.0)
        drop[:, 0] = False
        values = values.masked_fill(drop, -float("inf"))
        noise = torch.ones_like(values)
        for i, b in enumerate(sampled):
            noise[i, : ks[i]].exponential_(generator=self.rows[b].generator)
        values = values - noise.clamp_min_(1e-30).log()  # Gumbel-max: the argmax is a draw from the softmax
        drawn[sampled] = indices.gather(1, values.argmax(-1, keepdim=True)).squeeze(1)
        return drawn
