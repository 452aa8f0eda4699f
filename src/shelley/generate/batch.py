"""Many readers, one model: requests that arrive while the model is busy join the next batch.

``BatchWriter`` owns a transformers model and one worker thread. Every request (a prompt to continue, or a
scene writer's next chunk) becomes a row; the worker runs the rows it has for ``chunk`` tokens as one
left-padded batch, hands each row its new tokens, drops the rows that are done and takes in the rows that
arrived meanwhile. So a reader who asked for 48 tokens waits for a few chunks, not for the 2,000-word scene
another reader asked for first (a scene is many short requests through ``scene_engine``), and the model
always works on a batch, which on a CPU writes several times more tokens a second than one stream.

Why not Gradio's own batching (``batch=True``): it hands a function lists of inputs and waits for lists of
whole outputs, so a batched event cannot stream, and a batch ends when its longest member ends.

Each row samples with its own settings (temperature, top-k, top-p) and its own ``torch.Generator`` seeded
from the request's seed, and its repetition penalty sees only its own tokens (never the padding), so a row
draws the same tokens whichever rows share its batch: the same seed gives the same text alone or under load
(up to float rounding in a padded batch, which can flip a near-tie). The draw is not the one ``shelley
write`` makes for that seed: that samples a whole batch from torch's global generator.

It presents the engine interface of ``generate.llamacpp.LlamaCppWriter`` (``context``, ``generate``,
``scene_engine``, ``token_counts``), so ``write`` with its originality guard, the scene writer and the demo use
it unchanged.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shelley.config import GenerationConfig
from shelley.errors import ShelleyError
from shelley.generate.sampling import RowSampling
from shelley.generate.stream import common_prefix
from shelley.runtime import cpu_has_fast_bf16


class Busy(ShelleyError):
    """The queue is full: the reader is told to come back instead of waiting minutes."""


@dataclass
class _Row:
    ids: list[int]  # the context: prompt, then what this row has written so far
    left: int  # tokens still to write
    gen: GenerationConfig
    generator: object  # torch.Generator seeded with the request's seed
    min_new: int = 0  # end-of-text banned until this many tokens are written
    written: list[int] = field(default_factory=list)
    out: queue.Queue = field(default_factory=queue.Queue)  # lists of new token ids; None when done
    error: BaseException | None = None


class BatchWriter:
    def __init__(
        self, model, tokenizer, *, max_batch: int = 64, chunk: int = 16, max_waiting: int = 64, start: bool = True,
        context: int | None = None,
    ) -> None:  # fmt: skip
        from shelley.generate import context_window

        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.chunk, self.max_waiting = max_batch, chunk, max_waiting
        self.context = context if context is not None else context_window(model)  # tokens a row may hold
        self._local = threading.local()  # token_counts per calling thread: many readers call generate at once
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self._waiting: list[_Row] = []
        self._active: list[_Row] = []
        self._lock = threading.Condition()
        self._rate = 0.0  # tokens a second over the recent chunks, for the busy message
        self.batches: list[int] = []  # rows per chunk, newest last (the tests read it; capped)
        self._kept = None  # (rows, sequences, attention mask, KV cache) of the last chunk, while rows go on
        self._stopping = False
        self._worker = threading.Thread(target=self._loop, daemon=True, name="shelley-batch")
        if start:
            self.start()

    def start(self) -> None:
        """Start the worker (``start=False`` lets a caller queue requests first, as the tests do)."""
        self._worker.start()

    # -- the engine interface ---------------------------------------------------------------------------------

    @property
    def token_counts(self) -> list[int]:
        """Tokens written per sample by this thread's last ``generate``."""
        return getattr(self._local, "counts", [])

    def generate(
        self,
        prompts: list[str],
        gen: GenerationConfig,
        *,
        on_note: Callable[[str], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> list[str]:
        """``gen.num_samples`` continuations of every prompt, prompt-major; ``on_text`` receives the first
        sample's pieces as they come (a chunk at a time)."""
        from shelley.generate import check_generation, cut_at_stop, fit_prompts

        check_generation(gen)
        max_new = min(gen.max_new_tokens, self.context - 1)
        ids, notes = fit_prompts(self.tokenizer, prompts, self.context - max_new)
        for n in notes:
            (on_note or (lambda _m: None))(n)
        rows = [
            self.submit(p, max_new, gen, seed=gen.seed + s, min_new=gen.min_new_tokens)
            for p in ids
            for s in range(gen.num_samples)
        ]
        texts = []
        for i, row in enumerate(rows):
            tokens = self.wait(row, self._piece_writer(on_text) if i == 0 and on_text else None)
            texts.append(cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), gen.stop))
        self._local.counts = [len(r.written) for r in rows]
        return texts

    def scene_engine(self, gen: GenerationConfig) -> BatchSceneEngine:
        return BatchSceneEngine(self, gen)

    # -- the queue ---------------------------------------------------------------------------------------------

    def submit(self, ids: list[int], max_new: int, gen: GenerationConfig, *, seed: int, min_new: int = 0) -> _Row:
        """Queue one row; raises ``Busy`` (with a wait estimate) when ``max_waiting`` rows are ahead. A row asking
        for more tokens than its ``context`` holds is cut to fit here, and a prompt that leaves no room is refused
        here: past the limit in the worker, its error would fail every row of its batch."""
        import torch

        if len(ids) >= self.context:
            raise ShelleyError(
                f"a prompt of {len(ids)} tokens leaves no room in this writer's {self.context}-token rows: shorten it"
            )
        max_new = min(max(1, max_new), self.context - len(ids))
        row = _Row(list(ids), max_new, gen, torch.Generator().manual_seed(int(seed)), min_new=min_new)
        with self._lock:
            ahead = len(self._waiting) + len(self._active)
            if ahead >= self.max_waiting:
                tokens = sum(r.left for r in self._waiting + self._active)
                wait = tokens / self._rate if self._rate else 30.0
                raise Busy(f"busy: {ahead} requests ahead; try again in {max(1, round(wait))} s")
            self._waiting.append(row)
            self._lock.notify()
        return row

    def wait(self, row: _Row, on_tokens: Callable[[list[int]], None] | None = None) -> list[int]:
        """Wait for ``row`` (from ``submit``) to finish, passing its token chunks to ``on_tokens`` as they come; its
        tokens (end-of-text not included)."""
        for tokens in iter(row.out.get, None):
            if on_tokens:
                on_tokens(tokens)
        if row.error is not None:
            raise ShelleyError(f"generation failed: {row.error}")
        return [t for t in row.written if t != self.eos]

    def _piece_writer(self, on_text: Callable[[str], None]) -> Callable[[list[int]], None]:
        """Turn a row's token chunks into text pieces (decoding the whole row each time: a piece may end inside
        a character that the next token completes)."""
        seen: list[int] = []
        said = [""]

        def take(tokens: list[int]) -> None:
            seen.extend(t for t in tokens if t != self.eos)
            text = self.tokenizer.decode(seen, skip_special_tokens=True)
            if text.startswith(said[0]) and len(text) > len(said[0]):
                on_text(text[len(said[0]) :])
                said[0] = text

        return take

    # -- the worker --------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Let the worker finish the chunk it is on and end (the rows still queued are not written)."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._worker.is_alive():
            self._worker.join()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._active and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                room = self.max_batch - len(self._active)
                self._active += self._waiting[:room]
                del self._waiting[:room]
                rows = list(self._active)
            t0 = time.perf_counter()
            try:
                written = self._run_chunk(rows)
            except Exception as exc:  # every row of the batch is told; the worker lives on
                for r in rows:
                    r.error, r.left = exc, 0
                    r.out.put(None)
                written = 0
            if written:
                rate = written / max(time.perf_counter() - t0, 1e-6)
                self._rate = rate if not self._rate else 0.7 * self._rate + 0.3 * rate
            self.batches = [*self.batches, len(rows)][-1000:]
            with self._lock:
                self._active = [r for r in self._active if r.left > 0]
                if not self._active:
                    self._kept = None  # an idle batcher holds no KV cache

    def _run_chunk(self, rows: list[_Row]) -> int:
        """Up to ``chunk`` tokens for every row, as one left-padded batch; returns the tokens written.

        The batch goes on from the last chunk's KV cache (rows that left are dropped from it), so only the new
        tokens are computed; a row that joins costs a prefill of its own tokens (``_continued``)."""
        import torch
        from transformers import LogitsProcessorList

        from shelley.models.decode import cache_arg

        steps = min(self.chunk, max(r.left for r in rows))
        input_ids, attention, cache = self._continued(rows)
        width = input_ids.shape[1]
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=steps,
                do_sample=False,  # the rows draw in the processor; generate takes its argmax
                logits_processor=LogitsProcessorList([RowSampling(rows, width, self.eos)]),
                repetition_penalty=1.0,  # each row's own, over its own tokens, in RowSampling
                eos_token_id=self.eos,
                pad_token_id=self.pad,
                temperature=None,
                top_k=None,
                top_p=None,
                return_dict_in_generate=True,
                **{cache_arg(): cache},
            )
        self.model.train(was_training)
        seqs = out.sequences
        total = 0
        for row, new in zip(rows, seqs[:, width:].tolist(), strict=True):
            take = new[: row.left]
            if self.eos in take:
                take = take[: take.index(self.eos) + 1]
                row.left = 0
            else:
                row.left -= len(take)
            row.ids += take
            row.written += take
            total += len(take)
            row.out.put(take)
            if row.left <= 0:
                row.out.put(None)
        grown = seqs.shape[1] - width
        mask = torch.cat([attention, torch.ones(len(rows), grown, dtype=attention.dtype)], dim=1)
        self._kept = (list(rows), seqs, mask, getattr(out, cache_arg(), None))
        return total

    def _continued(self, rows: list[_Row]):
        """(input ids, attention mask, cache) for this chunk. The rows that were in the last chunk and wrote all of
        it go on from its KV cache (the rows that left dropped from it); rows that joined since are prefilled on
        their own and stacked below them, both padded on the left to one width. A fresh left-padded batch with no
        cache when nothing can go on (or the cache is not one whose layers can be stacked: sliding windows)."""
        import torch

        kept, self._kept = self._kept, None
        if kept is not None and kept[3] is not None:
            before, seqs, mask, cache = kept
            place = {id(r): i for i, r in enumerate(before)}
            idx = [place.get(id(r)) for r in rows]
            # a row goes on when its ids are the tail of its line: it wrote every token of the last chunk
            going = 0
            while going < len(rows) and idx[going] is not None:
                i, r = idx[going], rows[going]
                if seqs[i, seqs.shape[1] - len(r.ids) :].tolist() != r.ids:
                    break
                going += 1
            old = idx[:going]
            joiners = rows[going:]
            if old and old == sorted(old) and (not joiners or _stackable(cache)):
                if len(old) < len(before):
                    cache.batch_select_indices(torch.tensor(old))
                if not joiners:
                    return seqs[old], mask[old], cache
                if min(len(r.ids) for r in joiners) >= 2:
                    fresh = self._prefill(joiners)
                    if _stackable(fresh[2]):
                        return _stack((seqs[old], mask[old], cache), fresh, self.pad)
        return *self._left_padded(rows), None

    def _left_padded(self, rows: list[_Row]):
        """(ids, attention mask) of ``rows`` padded on the left to the longest."""
        import torch

        width = max(len(r.ids) for r in rows)
        ids = torch.tensor([[self.pad] * (width - len(r.ids)) + r.ids for r in rows])
        mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in rows])
        return ids, mask

    def _prefill(self, rows: list[_Row]):
        """(ids, attention mask, KV cache of all but each row's last token) for rows joining a running batch,
        left-padded: generate decodes the last token with the batch's next step."""
        import torch

        from shelley.models.decode import cache_arg

        ids, mask = self._left_padded(rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            out = self.model(
                input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True,
                logits_to_keep=1,
            )  # fmt: skip
        self.model.train(was_training)
        return ids, mask, getattr(out, cache_arg())


def _stackable(cache) -> bool:
    """Whether every layer of ``cache`` is a plain growing one (keys and values of shape batch, heads, tokens,
    dim), which ``_stack`` can pad and stack."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.keys is not None for layer in layers)


def _stack(a, b, pad: int):
    """One batch from two (ids, attention mask, cache) triples: each padded on the left to the wider one's width
    (masked padding, zero keys and values), ``b``'s rows below ``a``'s. The stacked cache is ``a``'s."""
    import torch

    width = max(a[0].shape[1], b[0].shape[1])
    out = []
    for ids, mask, cache in (a, b):
        d = width - ids.shape[1]
        if d:
            n = ids.shape[0]
            ids = torch.cat([torch.full((n, d), pad, dtype=ids.dtype), ids], dim=1)
            mask = torch.cat([torch.zeros(n, d, dtype=mask.dtype), mask], dim=1)
            for layer in cache.layers:
                for name in ("keys", "values"):
                    t = getattr(layer, name)
                    zeros = t.new_zeros(t.shape[0], t.shape[1], d, t.shape[3])
                    setattr(layer, name, torch.cat([zeros, t], dim=2))
        out.append((ids, mask, cache))
    (ia, ma, ca), (ib, mb, cb) = out
    for la, lb in zip(ca.layers, cb.layers, strict=True):
        la.keys = torch.cat([la.keys, lb.keys], dim=0)
        la.values = torch.cat([la.values, lb.values], dim=0)
    return torch.cat([ia, ib]), torch.cat([ma, mb]), ca


# a free slot that keeps at least this many tokens is kept for the row that will come back to it (a scene's next
# chunk), not filled by _compact: writing that context again would cost more than a second pass for a chunk
KEEP_TOKENS = 64


class SlotBatchWriter(BatchWriter):
    """``BatchWriter``'s queue over an engine whose cache holds every row in a slot of its own: shelley's decoder
    (``DecoderBatchWriter``) or llama.cpp (``generate.llamacpp.LlamaCppBatchWriter``). A step decodes the last
    token of every running row as one batch, and the rows draw with ``sampling.RowSampling``: each its own
    penalty, temperature, top-k, top-p and generator, so a seed writes the same text alone or beside other readers
    (up to float rounding in a batched product, which can flip a near-tie).

    A row that ends leaves its tokens in its slot; the next row whose context starts the same way (a scene's next
    chunk) takes that slot and prefills only what is new. The running rows are kept in consecutive slots
    (``_compact``): both engines decode one run of slots in one pass over the weights.

    An engine gives four hooks: ``_forget(slot, keep)`` (drop what a slot caches past ``keep`` tokens),
    ``_fill(items)`` (cache (slot, token, position) items, no scores), ``_move(source, target)`` (copy a slot's
    cache) and ``_step(items)`` (decode one item a row, in slot order; their next-token scores as a tensor)."""

    compact = True  # keep running rows in consecutive slots (llama.cpp's unified KV cache does not need it)

    def _slots(self, n: int) -> None:
        self.slots: list[list[int]] = [[] for _ in range(n)]  # the tokens each slot's cache holds
        self.owner: list[object | None] = [None] * n  # the row in each slot (None: free)

    def _run_chunk(self, rows) -> int:
        """Up to ``chunk`` tokens for every row, one batch a token; returns the tokens written."""
        self._seat(rows)
        self._compact()
        new: dict[int, list[int]] = {id(r): [] for r in rows}
        live = sorted((r for r in rows if r.left > 0), key=self._slot_of)  # in slot order: see _compact
        for _ in range(min(self.chunk, max(r.left for r in rows))):
            live = [r for r in live if r.left > 0]
            if not live:
                break
            slots = [self._slot_of(r) for r in live]
            scores = self._step([(s, r.ids[-1], len(r.ids) - 1) for s, r in zip(slots, live, strict=True)])
            input_ids, _ = self._left_padded(live)
            drawn = RowSampling(live, input_ids.shape[1], self.eos).draw(input_ids, scores).tolist()
            for s, r, t in zip(slots, live, drawn, strict=True):
                self.slots[s].append(r.ids[-1])  # the token just decoded is in the slot's cache now
                r.ids.append(t)
                r.written.append(t)
                new[id(r)].append(t)
                r.left = 0 if t == self.eos else r.left - 1
        for r in rows:
            if new[id(r)]:
                r.out.put(new[id(r)])
            if r.left <= 0:
                r.out.put(None)
                self.owner[self._slot_of(r)] = None  # its tokens stay in the slot for a row that shares them
        return sum(len(v) for v in new.values())

    def _seat(self, rows) -> None:
        """Give every row a slot whose cache holds all its ids but the last (decoded with the next step): the free
        slot that shares the longest start with it, less what differs; what is new of every joining row is
        cached together (``_fill``)."""
        for s, r in enumerate(self.owner):
            if r is not None and not any(r is row for row in rows):
                self.owner[s] = None  # a row a failed chunk ended
        todo: list[tuple[int, int, int]] = []
        for r in rows:
            if self._slot_of(r) is not None:
                continue
            free = [s for s, o in enumerate(self.owner) if o is None]
            shared = [common_prefix(self.slots[s], r.ids[:-1]) for s in free]
            best = max(range(len(free)), key=shared.__getitem__)  # ties: the lowest (_compact closes gaps left)
            s, keep = free[best], shared[best]
            self._forget(s, keep)
            todo += [(s, t, keep + i) for i, t in enumerate(r.ids[keep:-1])]
            self.slots[s] = r.ids[:-1]
            self.owner[s] = r
        if todo:
            self._fill(todo)

    def _compact(self) -> None:
        """Keep the running rows in consecutive slots. Both engines put only consecutive slots into one pass over
        the weights (llama.cpp: ``split_equal`` with sequential ids; the decoder: one span of its cache): with
        llama.cpp, rows in slots 0, 1, 2 and 5 cost two passes a token, and under steady traffic, where readers
        come and go, a 20-row step took 270 ms instead of 115. So the row in the highest slot moves into the
        lowest hole (its cache is copied; nothing is computed again). A hole that keeps a long context for a row
        about to come back (a scene's next chunk) is left alone: that row takes it again within a chunk or two."""
        if not self.compact:
            return
        while True:
            taken = [s for s, o in enumerate(self.owner) if o is not None]
            holes = [h for h in range(taken[0], taken[-1]) if self.owner[h] is None] if taken else []
            holes = [h for h in holes if len(self.slots[h]) < KEEP_TOKENS]
            if not holes:
                return
            hole, top = holes[0], taken[-1]
            self._move(top, hole)
            self.slots[hole], self.owner[hole] = self.slots[top], self.owner[top]
            self.slots[top], self.owner[top] = [], None

    def _slot_of(self, row) -> int | None:
        return next((s for s, o in enumerate(self.owner) if o is row), None)  # rows compare by identity, not fields


def batch_writer(model, tokenizer, **kw) -> BatchWriter:
    """The batcher for ``model``: ``DecoderBatchWriter`` where shelley's decoder runs it (a Llama-architecture
    model on the CPU), else ``BatchWriter`` (transformers' ``generate``)."""
    from shelley.models.llama_decode import unsupported

    if unsupported(model) is None:
        return DecoderBatchWriter(model, tokenizer, **kw)
    return BatchWriter(model, tokenizer, **kw)


class DecoderBatchWriter(SlotBatchWriter):
    """The batcher on ``models.llama_decode.LlamaDecoder``: every reader a slot of its cache, a step one batch
    over the running slots, products of three rows or more in bf16 (``wide``) where the CPU has bf16 arithmetic.
    On 2 cores a 50-row step of SmolLM2-135M takes about 110-140 ms, where transformers' ``generate`` took about
    400 (see ``docs/results``, serving).

    KV memory: each slot holds up to ``row_context`` tokens, in the model's float32 (SmolLM2-135M: 46 kB a
    token, 53 MB a slot at 1,152 tokens, 3.4 GB for 64 slots). The cache grows by doubling only as far as the
    longest row needs: 50 readers of a paragraph keep it at 256 positions (0.75 GB); scenes take it to 1,152."""

    def __init__(
        self, model, tokenizer, *, max_batch: int = 64, chunk: int = 16, max_waiting: int = 64,
        row_context: int = 1152, wide: bool | None = None, start: bool = True,
    ) -> None:  # fmt: skip
        from shelley.generate import context_window
        from shelley.models.llama_decode import LlamaDecoder

        limit = min(row_context, context_window(model))
        super().__init__(
            model, tokenizer, max_batch=max_batch, chunk=chunk, max_waiting=max_waiting, start=False, context=limit
        )
        wide = cpu_has_fast_bf16() if wide is None else wide
        self.decoder = LlamaDecoder(model, slots=max_batch, wide=wide, positions=limit)
        self._slots(max_batch)
        if start:
            self.start()

    def _forget(self, slot: int, keep: int) -> None:
        pass  # positions past ``keep`` are written again before anything reads them

    def _move(self, source: int, target: int) -> None:
        self.decoder.move(source, target)

    def _fill(self, items: list[tuple[int, int, int]]) -> None:
        """Each run of consecutive slots in one batch (the rows padded to the longest)."""
        for first, rows, starts in _runs(items):
            self.decoder.forward_rows(first, rows, starts, logits=False)

    def _step(self, items: list[tuple[int, int, int]]):
        ((first, rows, starts),) = _runs(items, one=True)
        return self.decoder.forward_rows(first, rows, starts)


def _runs(items: list[tuple[int, int, int]], *, one: bool = False):
    """(first slot, rows, starts) for ``forward_rows`` from (slot, token, position) items (a slot's items in
    position order): each run of consecutive slots apart, or with ``one`` a single span from the lowest slot
    to the highest (slots between them that have no items ride along as None)."""
    by_slot: dict[int, list[tuple[int, int]]] = {}
    for slot, token, pos in items:
        by_slot.setdefault(slot, []).append((token, pos))
    order = sorted(by_slot)
    groups: list[list[int]] = []
    for s in order:
        if groups and (one or s == groups[-1][-1] + 1):
            groups[-1].append(s)
        else:
            groups.append([s])
    out = []
    for g in groups:
        span = range(g[0], g[-1] + 1)
        rows = [[t for t, _ in by_slot[s]] if s in by_slot else None for s in span]
        starts = [by_slot[s][0][1] if s in by_slot else 0 for s in span]
        out.append((g[0], rows, starts))
    return out


class BatchSceneEngine:
    """The scene writer's ``continue_ids`` over a ``BatchWriter``: each chunk of a scene is one request, so a
    long scene yields to the readers who arrive while it is written."""

    def __init__(self, writer: BatchWriter, gen: GenerationConfig) -> None:
        self.writer, self.gen = writer, gen
        self.position_limit = writer.context

    def continue_ids(self, ids, max_new, *, seed, ban_eos=False, on_token=None):
        row = self.writer.submit(ids, max_new, self.gen, seed=seed, min_new=1 if ban_eos else 0)

        def each(tokens: list[int]) -> None:
            for t in tokens:
                on_token(t)

        self.writer.wait(row, each if on_token else None)
        return list(row.written)
