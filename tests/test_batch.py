"""The micro-batchers behind the demo (generate.batch): readers who arrive together share a batch, each gets the
text its seed gives alone, long requests yield between chunks, and a full queue says when to come back. The
behaviour tests run on both transformers batchers: ``BatchWriter`` (generate) and ``DecoderBatchWriter``
(shelley's decoder, a slot of its cache per reader)."""

from __future__ import annotations

import threading

import pytest


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(params=["generate", "decoder"])
def make(request):
    """A batcher class by name; the decoder's products stay float32 (``wide=False``) so that a row's numbers do
    not depend on how many rows share its product (bf16 from 8 rows: see test_llama_decode)."""
    from shelley.generate.batch import BatchWriter, DecoderBatchWriter

    if request.param == "generate":
        return BatchWriter
    return lambda model, tok, **kw: DecoderBatchWriter(model, tok, wide=False, **kw)


def _gen(**kw):
    from shelley.config import GenerationConfig

    return GenerationConfig(max_new_tokens=20, min_new_tokens=20, num_samples=1, **kw)


def _ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_two_readers_share_one_batch_and_each_gets_what_it_gets_alone(tiny, make):

    model, tok = tiny
    alone = make(model, tok)
    first = alone.generate(["The storm broke"], _gen(seed=7))[0]
    second = alone.generate(["I was alone, and the night"], _gen(seed=9, temperature=1.2, top_p=0.8, top_k=7))[0]
    assert first != second and alone.batches and max(alone.batches) == 1

    together = make(model, tok, start=False)
    rows = [
        together.submit(_ids(tok, "The storm broke"), 20, _gen(seed=7), seed=7, min_new=20),
        together.submit(_ids(tok, "I was alone, and the night"), 20, _gen(seed=9, temperature=1.2, top_p=0.8, top_k=7),
                        seed=9, min_new=20),
    ]  # fmt: skip
    together.start()
    texts = [tok.decode(together.wait(r), skip_special_tokens=True) for r in rows]
    assert together.batches[0] == 2  # both rows in the first chunk
    assert texts == [first, second]


def test_a_greedy_row_in_a_padded_batch_writes_what_plain_generate_writes(tiny, make):
    """Left padding, the rows' own attention and positions: a greedy row beside a longer sampled one writes the
    tokens transformers' own greedy generate writes for it alone."""
    from shelley.generate import generate_texts

    model, tok = tiny
    greedy = _gen(do_sample=False, repetition_penalty=1.3, seed=1)
    expected = generate_texts(model, tok, ["The storm"], greedy)[0]
    writer = make(model, tok, start=False, chunk=6)  # several chunks: the context is re-read between them
    row = writer.submit(_ids(tok, "The storm"), 20, greedy, seed=1, min_new=20)
    writer.submit(_ids(tok, "It was on a dreary night of November, and I"), 20, _gen(seed=3), seed=3)
    writer.start()
    assert tok.decode(writer.wait(row), skip_special_tokens=True) == expected


def test_a_long_request_yields_to_a_short_one_between_chunks(tiny, make):
    """A 100-token request is running when a 4-token one arrives: the short one joins the next chunk and ends
    long before the long one (chunked scheduling), instead of waiting for it."""

    model, tok = tiny
    writer = make(model, tok, chunk=4)
    done: list[str] = []
    long_row = writer.submit(_ids(tok, "The storm"), 100, _gen(seed=1), seed=1, min_new=100)  # in 128 positions
    next(iter(long_row.out.get, None))  # the long request has written its first chunk
    short = writer.submit(_ids(tok, "I was"), 4, _gen(seed=2), seed=2, min_new=4)

    def wait(row, name):
        writer.wait(row)
        done.append(name)

    threads = [threading.Thread(target=wait, args=(r, n)) for r, n in ((long_row, "long"), (short, "short"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert done == ["short", "long"] and len(short.written) == 4 and len(long_row.written) == 100
    assert 2 in writer.batches  # they shared chunks


def test_a_row_asking_past_its_room_is_cut_to_fit_and_a_prompt_with_no_room_is_refused(tiny, make):
    """A direct submit asking for more tokens than a row holds stops at the row's limit, and the row beside it in
    the batch writes what it asked for (past the limit in the worker, the error failed the whole batch); a
    prompt that leaves no room is refused at submit, before it joins a batch."""
    from shelley.errors import ShelleyError

    model, tok = tiny
    writer = make(model, tok, start=False)
    long_prompt = (_ids(tok, "The storm broke over the mountains and the lake. ") * 40)[: writer.context - 10]
    long = writer.submit(long_prompt, 500, _gen(seed=1), seed=1, min_new=500)
    short = writer.submit(_ids(tok, "The storm"), 20, _gen(seed=2), seed=2, min_new=20)
    writer.start()
    assert len(writer.wait(long)) == 10 and len(writer.wait(short)) == 20
    with pytest.raises(ShelleyError, match="leaves no room"):
        writer.submit(long_prompt + long_prompt[:10], 5, _gen(seed=3), seed=3)
    writer.stop()


def test_a_full_queue_says_when_to_come_back(tiny, make):
    from shelley.generate.batch import Busy

    model, tok = tiny
    writer = make(model, tok, max_waiting=2, start=False)
    for seed in (1, 2):
        writer.submit(_ids(tok, "The storm"), 8, _gen(seed=seed), seed=seed)
    with pytest.raises(Busy, match=r"busy: 2 requests ahead; try again in \d+ s"):
        writer.submit(_ids(tok, "The storm"), 8, _gen(seed=3), seed=3)


def test_a_scene_is_written_through_the_batcher(tiny, make):
    from shelley.generate.scene import write_scene

    model, tok = tiny
    writer = make(model, tok)
    scene = write_scene(writer.scene_engine(_gen(seed=5)), tok, "The storm", 100, seed=5)
    assert scene.words >= 90 and scene.text.strip() and len(writer.batches) > 1  # chunk by chunk


def test_a_batch_goes_on_from_its_kv_cache_until_a_row_joins(tiny):
    """Chunk after chunk with the same rows, only the new tokens are computed (one prefill), and an idle batcher
    keeps no cache."""
    from shelley.generate.batch import BatchWriter

    model, tok = tiny
    widths: list[int] = []
    real = model.forward

    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids")
        widths.append(ids.shape[1] if ids is not None else -1)
        return real(*args, **kwargs)

    model.forward = forward
    try:
        writer = BatchWriter(model, tok, chunk=4)
        row = writer.submit(_ids(tok, "The storm broke over the lake"), 12, _gen(seed=1), seed=1, min_new=12)
        writer.wait(row)
        assert len(row.written) == 12 and [w > 1 for w in widths].count(True) == 1  # three chunks, one prefill
    finally:
        model.forward = real
    import time

    deadline = time.time() + 10  # the worker lets go of the cache right after it hands out the last tokens
    while writer._kept is not None and time.time() < deadline:
        time.sleep(0.05)
    assert writer._kept is None


def test_a_row_that_joins_is_prefilled_alone_and_both_rows_write_what_they_write_alone(tiny):
    """A row that joins a running batch costs a prefill of its own tokens, not of the whole batch: the rows that
    go on keep their KV cache and the joiner's is stacked below it (both padded on the left). Every row still
    writes what its seed writes alone."""
    from shelley.generate.batch import BatchWriter

    model, tok = tiny
    first, second = _ids(tok, "The storm broke over the lake"), _ids(tok, "It was on a dreary night of November")

    def alone(ids, n, seed):
        writer = BatchWriter(model, tok, chunk=4, start=False)
        row = writer.submit(ids, n, _gen(seed=seed), seed=seed, min_new=n)
        while row.left > 0:
            writer._run_chunk([row])
        return row.written

    shapes: list[tuple[int, int]] = []
    real = model.forward

    def forward(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return real(*args, **kwargs)

    writer = BatchWriter(model, tok, chunk=4, start=False)
    a = writer.submit(first, 12, _gen(seed=1), seed=1, min_new=12)
    writer._run_chunk([a])
    b = writer.submit(second, 8, _gen(seed=2), seed=2, min_new=8)
    model.forward = forward
    try:
        writer._run_chunk([a, b])  # b joins
    finally:
        model.forward = real
    assert shapes[0] == (1, len(second) - 1)  # the joiner's own prefill
    assert all(n == 2 and w == 1 for n, w in shapes[1:])  # then one token per row a step: no batch re-prefill
    while a.left > 0 or b.left > 0:
        writer._run_chunk([r for r in (a, b) if r.left > 0])
    assert a.written == alone(first, 12, 1) and b.written == alone(second, 8, 2)


def _spy_rows(writer) -> list[tuple[int, list[int], bool]]:
    """Record every batch the decoder batcher runs: (first slot, ids per slot, whether it asked for logits)."""
    calls: list[tuple[int, list[int], bool]] = []
    real = writer.decoder.forward_rows

    def spy(first, rows, starts, *, logits=True):
        calls.append((first, [len(r) if r else 0 for r in rows], logits))
        return real(first, rows, starts, logits=logits)

    writer.decoder.forward_rows = spy
    return calls


def _alone(model, tok, ids, n, seed):
    from shelley.generate.batch import DecoderBatchWriter

    writer = DecoderBatchWriter(model, tok, chunk=4, wide=False, start=False)
    row = writer.submit(ids, n, _gen(seed=seed), seed=seed, min_new=n)
    while row.left > 0:
        writer._run_chunk([row])
    return row.written


def test_the_decoder_batcher_steps_every_row_at_once_and_prefills_only_a_joiners_tokens(tiny):
    from shelley.generate.batch import DecoderBatchWriter

    model, tok = tiny
    first, second = _ids(tok, "The storm broke over the lake"), _ids(tok, "It was on a dreary night of November")
    writer = DecoderBatchWriter(model, tok, chunk=4, wide=False, start=False)
    calls = _spy_rows(writer)
    a = writer.submit(first, 12, _gen(seed=1), seed=1, min_new=12)
    writer._run_chunk([a])
    assert calls[0] == (0, [len(first) - 1], False) and len(calls) == 5  # its prefill, then 4 steps
    calls.clear()
    b = writer.submit(second, 8, _gen(seed=2), seed=2, min_new=8)
    writer._run_chunk([a, b])  # b joins in the next slot: its own tokens only, then both rows in every step
    assert calls == [(1, [len(second) - 1], False)] + [(0, [1, 1], True)] * 4
    while a.left > 0 or b.left > 0:
        writer._run_chunk([r for r in (a, b) if r.left > 0])
    assert a.written == _alone(model, tok, first, 12, 1) and b.written == _alone(model, tok, second, 8, 2)


def test_a_row_in_the_highest_slot_moves_into_a_hole_and_writes_what_it_writes_alone(tiny):
    """When the middle row of three ends, the top row's cache moves into its slot (the running rows stay side
    by side: one span a step, no idle slot inside it) and the moved row goes on as if nothing happened."""
    from shelley.generate.batch import DecoderBatchWriter

    model, tok = tiny
    texts = ["The storm broke over the lake", "I was", "It was on a dreary night of November"]
    lengths = [12, 4, 12]
    writer = DecoderBatchWriter(model, tok, chunk=4, wide=False, start=False)
    rows = [
        writer.submit(_ids(tok, t), n, _gen(seed=i), seed=i, min_new=n)
        for i, (t, n) in enumerate(zip(texts, lengths, strict=True))
    ]
    writer._run_chunk(rows)
    assert rows[1].left == 0 and [writer._slot_of(r) for r in rows] == [0, None, 2]
    calls = _spy_rows(writer)
    writer._run_chunk([rows[0], rows[2]])
    assert writer._slot_of(rows[2]) == 1 and all(c == (0, [1, 1], True) for c in calls)
    while rows[0].left > 0 or rows[2].left > 0:
        writer._run_chunk([r for r in (rows[0], rows[2]) if r.left > 0])
    for i in (0, 2):
        assert rows[i].written == _alone(model, tok, _ids(tok, texts[i]), lengths[i], i)


def test_a_scenes_next_chunk_takes_its_slot_back_and_prefills_only_what_is_new(tiny):
    from conftest import tiny_causal_lm
    from shelley.generate.batch import DecoderBatchWriter
    from shelley.generate.scene import write_scene

    _, tok = tiny
    model = tiny_causal_lm("llama", len(tok), max_positions=1024).eval()  # room for the scene: no rolling context
    writer = DecoderBatchWriter(model, tok, chunk=4, wide=False)
    calls = _spy_rows(writer)
    asked: list[int] = []
    submit = writer.submit
    writer.submit = lambda ids, *a, **k: asked.append(len(ids)) or submit(ids, *a, **k)
    scene = write_scene(writer.scene_engine(_gen(seed=5)), tok, "The storm", 100, seed=5)
    prefilled = sum(sum(n) for _, n, logits in calls if not logits)
    assert scene.words >= 90 and len(asked) > 2  # several chunks, each a request with the whole context
    assert prefilled < sum(asked) / 2  # an engine that forgot its slots would prefill every request whole


def test_the_decoder_batchers_cache_never_grows_past_what_a_row_may_hold(tiny):
    """The cache grows by doubling; with 64 slots a doubling past ``row_context`` (1,152 -> 2,048 positions) would
    have cost SmolLM2 6 GB instead of 3.4. A row of 290 tokens under ``row_context=300`` leaves it at 300."""
    from conftest import tiny_causal_lm
    from shelley.generate.batch import DecoderBatchWriter

    _, tok = tiny
    model = tiny_causal_lm("llama", len(tok), max_positions=1024).eval()
    writer = DecoderBatchWriter(model, tok, row_context=300, wide=False, start=False)
    row = writer.submit(list(range(5, 285)), 10, _gen(seed=1), seed=1, min_new=10)
    while row.left > 0:
        writer._run_chunk([row])
    assert len(row.ids) == 290 and writer.decoder.capacity == writer.context == 300


def test_the_batcher_is_the_decoders_where_it_runs_the_model():
    from conftest import tiny_causal_lm
    from shelley.generate.batch import BatchWriter, DecoderBatchWriter, batch_writer

    class Tok:
        eos_token_id = pad_token_id = 0

    for kind, cls in (("llama", DecoderBatchWriter), ("gpt2", BatchWriter), ("gemma3", BatchWriter)):
        writer = batch_writer(tiny_causal_lm(kind, 64).eval(), Tok(), start=False)
        assert type(writer) is cls, kind


def test_each_rows_penalty_touches_only_its_own_tokens():
    """The batched draw penalises exactly what transformers' repetition penalty does, row by row: a token seen
    twice once, padding never (top_k=1 makes a sampled row's draw the best penalised score)."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    from shelley.generate.batch import _Row
    from shelley.generate.sampling import RowSampling

    vocab, pad = 40, 0
    texts = [[5, 7, 7, 9], [0, 3, 3], [2]]  # the second row's 0 is its own token; the third row is padded with 0
    penalties = [2.5, 3.0, 2.0]
    gens = [_gen(do_sample=False, repetition_penalty=penalties[0]), _gen(top_k=1, repetition_penalty=penalties[1]),
            _gen(do_sample=False, repetition_penalty=penalties[2])]  # fmt: skip
    rows = [
        _Row(list(t), 4, g, torch.Generator().manual_seed(b)) for b, (t, g) in enumerate(zip(texts, gens, strict=True))
    ]
    width = max(len(t) for t in texts)
    input_ids = torch.tensor([[pad] * (width - len(t)) + t for t in texts])
    scores = torch.zeros(3, vocab)
    for b, t in enumerate(texts):  # every row's own tokens score highest, so the penalty decides the draw
        scores[b, t] = torch.linspace(4.0, 3.0, len(t))
    scores[:, 1] = 2.0
    scores[2, pad] = 3.0  # the padded row's best unpenalised token is the padding id: padding must not penalise it
    drawn = RowSampling(rows, width, eos=39).draw(input_ids, scores)
    for b, t in enumerate(texts):
        expected = RepetitionPenaltyLogitsProcessor(penalties[b])(torch.tensor([t]), scores[b : b + 1].clone())
        assert drawn[b].item() == expected.argmax().item()
    assert drawn.tolist() == [1, 1, 0]
