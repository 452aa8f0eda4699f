"""The exported GGUF in llama.cpp (llama-cpp-python): the same greedy text and next-token choices as the model
shelley saved, Q4_K_M made by llama.cpp's quantizer, and `shelley write --engine llamacpp`.

llama-cpp-python is an optional extra (it compiles for minutes): `make setup-llamacpp`. CI installs it, and
there a missing llama-cpp-python fails these tests instead of skipping them.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch
from bench.export_check import greedy_ids, llamacpp_greedy

from test_export import _run


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python is missing: CI installs it with `make setup-llamacpp`")
        pytest.skip("llama-cpp-python is not installed: `make setup-llamacpp`")
    return llama_cpp


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def exported(request, tmp_path_factory, tiny_tokenizer_dir, shelley_home):
    _llama_cpp()
    from shelley.export import export_run

    run = _run(tmp_path_factory, tiny_tokenizer_dir, request.param)
    return run, export_run(run, "gguf", quant="f16")


def test_llamacpp_greedy_text_matches_transformers_on_the_same_file(exported):
    """Greedy continuations of the eval prompts: llama.cpp running the GGUF writes exactly what transformers
    writes with the saved model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shelley.generate.llamacpp import LlamaCppWriter

    run, path = exported
    tok = AutoTokenizer.from_pretrained(run.output)
    model = AutoModelForCausalLM.from_pretrained(run.output).eval()
    writer = LlamaCppWriter(path, n_ctx=128)
    for prompt in run.prompts():
        ids = tok(prompt, add_special_tokens=False).input_ids
        assert writer.llm.tokenize(prompt.encode(), add_bos=False) == ids  # the tokenizer travelled with the file
        # 20 greedy tokens each, end-of-text an ordinary token (llama.cpp's plain loop)
        assert llamacpp_greedy(writer, ids, 20) == greedy_ids(model, ids, 20)


def test_llamacpp_next_token_agrees_with_transformers_on_the_validation_tokens(exported):
    from transformers import AutoModelForCausalLM

    from shelley.eval.evaluate import cached_stream
    from shelley.generate.llamacpp import LlamaCppWriter

    run, path = exported
    ids = [int(x) for x in np.asarray(cached_stream(run))[:64]]
    writer = LlamaCppWriter(path, n_ctx=128, logits=True)
    ours = writer.logits(ids)
    model = AutoModelForCausalLM.from_pretrained(run.output).eval()
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    assert agree >= 0.98
    assert np.abs(ours - theirs).max() < 5e-3


def test_q4_k_m_is_made_by_llamacpp_and_runs(exported):
    from shelley.export import export_run
    from shelley.generate.llamacpp import LlamaCppWriter

    run, f16 = exported
    q4 = export_run(run, "gguf", quant="q4_k_m")
    assert q4.name.endswith("-q4_k_m.gguf") and q4.stat().st_size < f16.stat().st_size
    text = LlamaCppWriter(q4, n_ctx=128).generate(["The storm"], run.config().generation)[0]
    assert isinstance(text, str)


def test_write_with_the_llamacpp_engine_keeps_the_originality_guard(cli, exported):
    import json

    run, _path = exported
    res = cli("write", run.root, "The storm", "--engine", "llamacpp", "--samples", "2", "-n", "12", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["model"].endswith("-f16.gguf") and len(doc["samples"]) == 2
    assert all("originality" in s and s["originality"]["longest_span"] >= 0 for s in doc["samples"])


def test_llamacpp_engine_without_an_export_says_how_to_make_one(cli, tmp_path_factory, tiny_tokenizer_dir):
    _llama_cpp()
    run = _run(tmp_path_factory, tiny_tokenizer_dir, "llama")
    res = cli("write", run.root, "The storm", "--engine", "llamacpp")
    assert res.exit_code == 2 and f"make one with `shelley export {run.root}`" in res.stderr
    assert "Traceback" not in res.stderr


def test_min_new_tokens_bans_end_of_text_in_llamacpp_as_in_transformers(exported):
    from shelley.generate.llamacpp import LlamaCppWriter

    run, path = exported
    writer = LlamaCppWriter(path, n_ctx=128)
    gen = run.config().generation.model_copy(update={"max_new_tokens": 16, "min_new_tokens": 16, "num_samples": 2})
    texts = writer.generate(["The storm"], gen)
    # none ended early (llama-cpp-python may take one token more to finish a character cut in half)
    assert len(texts) == 2 and all(16 <= n <= 17 for n in writer.token_counts)


def test_the_demo_streams_from_llamacpp_and_keeps_the_guard(exported):
    from shelley.serve.app import load_demo

    run, _path = exported
    gen = run.config().generation.model_copy(update={"max_new_tokens": 40, "min_new_tokens": 40})
    demo = load_demo(str(run.root), gen, engine="llamacpp")
    assert demo.engine is not None and demo.model is None
    steps = list(demo.generate("The storm", 0.8, 0.95, 40, 7, original=False))
    assert len(steps) >= 3  # pieces as they arrive (a chunk of 16 tokens at a time), then the text with its notes
    assert all(b[0].startswith(a[0]) for a, b in itertools.pairwise(steps))
    assert "longest copied span" in steps[-1][1]
    (text, notes), *_ = demo.generate("The storm", 0.8, 0.95, 10, 7, original=True)
    assert (text and "after 1 draw" in notes) or "draw(s)" in notes


def test_chat_in_continue_mode_on_llamacpp(cli, exported):
    run, _path = exported
    res = cli("chat", run.root, "--engine", "llamacpp", "-n", "6", "--mode", "continue")
    assert res.exit_code == 0, res.stderr  # stdin is empty: the REPL ends at once, cleanly
    from shelley.generate.chat import ChatSession
    from shelley.generate.load import load_writer

    loaded, fast = load_writer(str(run.root), "llamacpp", None)
    gen = run.config().generation.model_copy(update={"max_new_tokens": 6, "min_new_tokens": 6})
    session = ChatSession(loaded.model, loaded.tokenizer, gen, "continue", engine=fast)
    first = session.reply("The storm", stream=False)
    second = session.reply("and then", stream=False)
    assert first and second and len(session.turns) == 2 and fast.token_counts[0] >= 6


def test_scene_on_llamacpp_takes_token_ids_and_keeps_beats_and_guard(cli, exported, tmp_path):
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shelley.config import GenerationConfig
    from shelley.generate.llamacpp import LlamaCppWriter
    from shelley.generate.scene import TransformersEngine

    run, path = exported
    tok = AutoTokenizer.from_pretrained(run.output)
    greedy = GenerationConfig(do_sample=False, repetition_penalty=1.0)
    fast = LlamaCppWriter(path, n_ctx=128).scene_engine(greedy)
    model = AutoModelForCausalLM.from_pretrained(run.output)
    slow = TransformersEngine(model, tok, greedy)
    ids = tok("The storm broke", add_special_tokens=False).input_ids
    limit = getattr(model.config, "max_position_embeddings", None) or model.config.n_positions
    assert fast.position_limit == min(256, limit)  # llama.cpp rounds its context up to 256, never past the model's
    assert fast.continue_ids(ids, 12, seed=1) == slow.continue_ids(ids, 12, seed=1)  # the same greedy tokens
    beats = tmp_path / "beats.txt"
    beats.write_text("Then the candle went out.\n")
    res = cli("write", run.root, "The storm", "--engine", "llamacpp", "--words", "100", "--beats", beats,
              "--original", "--json")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    scene = json.loads(res.stdout)["scene"]
    assert scene["paragraphs"][scene["beat_paragraphs"][0]].startswith("Then the candle went out.")
    assert scene["words"] >= 80 and scene["guard"]["on"] and scene["context_tokens"] < limit


def test_llamacpp_repetition_penalty_covers_the_whole_context_as_in_transformers(exported):
    """A strong penalty, greedy, on a prompt that repeats itself: llama.cpp's own penalty would see only the
    tokens it sampled in this call; through ``hf_sampling`` it sees the prompt too and picks what transformers
    picks, token for token, across two chunks of one scene (the second call's context holds the first's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shelley.config import GenerationConfig
    from shelley.generate.llamacpp import LlamaCppWriter
    from shelley.generate.scene import TransformersEngine

    run, path = exported
    tok = AutoTokenizer.from_pretrained(run.output)
    gen = GenerationConfig(do_sample=False, repetition_penalty=1.8)
    fast = LlamaCppWriter(path, n_ctx=128).scene_engine(gen)
    slow = TransformersEngine(AutoModelForCausalLM.from_pretrained(run.output), tok, gen)
    ids = tok("The storm broke and the storm broke and the storm", add_special_tokens=False).input_ids
    first = fast.continue_ids(ids, 8, seed=1)
    assert first == slow.continue_ids(ids, 8, seed=1)
    assert fast.continue_ids(ids + first, 8, seed=2) == slow.continue_ids(ids + first, 8, seed=2)


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_eval_scenes_on_llamacpp_exports_both_models_once(cli, exported, quant):
    import json

    run, _path = exported
    res = cli("eval", run.root, "--scenes", "1", "--words", "100", "--engine", "llamacpp", "--quant", quant)
    assert res.exit_code == 0, res.stderr
    sc = json.loads((run.root / "eval.json").read_text())["scenes"]
    assert [len(sc["rows"][w]) for w in ("base", "finetuned")] == [1, 1]
    assert (run.root / "export" / f"base-{quant}.gguf").exists() and run.gguf(quant).exists()
    assert sc["rows"]["finetuned"][0]["words"] >= 80 and sc["timing"]["base"]["tokens"] > 0
    from shelley.generate.load import load_writer

    # write/serve/chat --engine llamacpp run the fine-tuned export, not the base model's beside it
    assert load_writer(str(run.root), "llamacpp", None)[1].path == run.gguf("f16")


def test_eval_scenes_refuses_a_quant_it_does_not_write_from(cli, tiny_run):
    res = cli("eval", tiny_run, "--scenes", "1", "--words", "100", "--engine", "llamacpp", "--quant", "q4_k_m")
    assert res.exit_code == 2 and "--quant f16 or q8_0" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.8, 50, 0.95), (1.3, 7, 0.6), (0.5, 0, 1.0)])
def test_hf_sampling_shapes_scores_as_transformers_warpers(temperature, top_k, top_p):
    """The processor llama.cpp samples through gives the scores transformers' repetition penalty, temperature,
    top-k and top-p give, in that order: the same kept tokens and the same values (needs no llama.cpp)."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from shelley.config import GenerationConfig
    from shelley.generate.llamacpp import hf_sampling

    rng = np.random.default_rng(0)
    scores = rng.normal(0, 3, 500).astype(np.float32)
    context = rng.integers(0, 500, 80)
    gen = GenerationConfig(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=1.3)
    ours = hf_sampling(gen)(context, scores.copy())
    chain = [RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(temperature)]
    chain += [TopKLogitsWarper(top_k)] if top_k else []
    chain += [TopPLogitsWarper(top_p)] if top_p < 1 else []
    theirs = LogitsProcessorList(chain)(torch.from_numpy(context)[None], torch.from_numpy(scores)[None])[0].numpy()
    assert np.array_equal(np.isfinite(ours), np.isfinite(theirs))
    assert np.isfinite(ours).sum() <= (top_k or 500)
    np.testing.assert_allclose(ours[np.isfinite(ours)], theirs[np.isfinite(theirs)], rtol=1e-6)


def _sentencepiece_vocab(path):
    """A tiny Gemma-style vocabulary as a GGUF holds it (sentencepiece: pieces with ▁ for spaces, scores, token
    types, byte fallback), written where an imported model keeps it (``models.registry.VOCAB_GGUF``)."""
    import gguf

    from conftest import BOOK_BODY

    words = sorted({w.strip(".,;:!?\"'()").lower() for w in BOOK_BODY.split()} - {""})[:60]
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [3, 3, 3, 2, 3] + [6] * 256
    normal = ["▁"] + sorted({c for w in words for c in w}) + [f"▁{w}" for w in words] + [w[:2] for w in words]
    normal = [p for p in dict.fromkeys(normal) if p not in pieces]
    pieces += normal
    types += [1] * len(normal)
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    w.add_token_scores([-1000.0] * 5 + [0.0] * 256 + [-float(i) for i in range(len(normal))])
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gemma3_exports_to_llamacpp_with_its_sentencepiece_vocabulary(tmp_path, shelley_home):
    """A tiny Gemma 3 whose tokenizer came from a GGUF, fine-tuned, exported and run by llama.cpp's gemma3: the
    same tokens for the same text, BOS first, and the same next-token scores as transformers (its norms written
    plus one, sliding and global layers as llama.cpp lays them out)."""
    _llama_cpp()
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig

    from shelley.config import load_config
    from shelley.export import export_run
    from shelley.finetune.loop import train
    from shelley.generate.llamacpp import LlamaCppWriter
    from shelley.models.registry import VOCAB_GGUF
    from shelley.run import Run
    from test_export import TEXTS

    base = tmp_path / "tiny-gemma"
    base.mkdir()
    _sentencepiece_vocab(base / VOCAB_GGUF)
    tok = AutoTokenizer.from_pretrained(base, gguf_file=VOCAB_GGUF)
    tok.save_pretrained(base)
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=128,
        sliding_window=8, bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    sets = [f"model.name={base}", "model.max_length=32", "train.method=full", "train.steps=3", "train.eval_every=3"]
    sets += ["train.micro_batch_size=4", "train.learning_rate=3e-3", "train.warmup_steps=1", "eval.stride=16"]
    train(load_config(None, sets), TEXTS * 4, TEXTS[:3], tmp_path / "run", show_progress=False)
    run = Run.open(tmp_path / "run")
    path = export_run(run, "gguf", quant="f16")

    writer = LlamaCppWriter(path, n_ctx=128, logits=True)
    text = "the storm broke over the lake, and I was alone"
    ids = tok(text).input_ids
    assert ids[0] == 2 and writer.llm.tokenize(text.encode(), add_bos=True) == ids  # BOS, then the same pieces
    ids = (ids * 4)[:40]  # past the sliding window of 8: both kinds of layer matter
    ours = writer.logits(ids)
    model = AutoModelForCausalLM.from_pretrained(run.output).eval()
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.95
    assert np.abs(ours - theirs).max() < 2e-2


def test_llamacpp_batcher_rows_share_a_batch_and_write_what_they_write_alone(exported):
    """Readers on the llama.cpp engine share one llama_batch a step: a greedy row writes what transformers'
    greedy generate writes for it alone (up to its end-of-text), and a sampled row what its seed writes alone,
    whichever rows run beside it (each row its own sequence and KV slot)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shelley.config import GenerationConfig
    from shelley.generate.llamacpp import LlamaCppBatchWriter, LlamaCppWriter

    run, path = exported
    tok = AutoTokenizer.from_pretrained(run.output)
    model = AutoModelForCausalLM.from_pretrained(run.output).eval()
    greedy = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=12, num_samples=1)
    sampled = GenerationConfig(seed=5, temperature=1.1, top_k=20, top_p=0.9, max_new_tokens=12, num_samples=1)
    prompts = ["The storm", "It was on a dreary night of November that I"]
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]

    def rows(writer, which):
        out = [writer.submit(ids[i], 12, g, seed=g.seed, min_new=12 * g.do_sample) for i, g in which]
        writer.start()
        return [writer.wait(r) for r in out]

    llm = LlamaCppWriter(path, n_ctx=128)
    alone = rows(LlamaCppBatchWriter(llm, tok, max_batch=4, row_context=64, chunk=5, start=False), [(1, sampled)])
    together = LlamaCppBatchWriter(llm, tok, max_batch=4, row_context=64, chunk=5, start=False)
    first, second = rows(together, [(0, greedy), (1, sampled)])
    assert together.batches[0] == 2  # both rows in one batch from the first chunk
    expected = greedy_ids(model, ids[0], 12)
    assert first == (expected[: expected.index(tok.eos_token_id)] if tok.eos_token_id in expected else expected)
    assert second == alone[0] and len(second) == 12


def test_llamacpp_batcher_closes_the_gap_a_finished_row_leaves_and_rows_write_what_they_write_alone(exported):
    """When a row ends, the row in the highest slot moves into its slot (its KV copied, nothing recomputed), so the
    running rows stay in consecutive slots: llama.cpp decodes consecutive sequences in one pass over the weights.
    The moved row writes exactly what it writes alone."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from shelley.config import GenerationConfig
    from shelley.generate.llamacpp import LlamaCppBatchWriter, LlamaCppWriter

    run, path = exported
    tok = AutoTokenizer.from_pretrained(run.output)
    gen = GenerationConfig(seed=3, temperature=1.0, top_k=30, top_p=0.95, max_new_tokens=15, num_samples=1)
    prompts = ["The storm", "It was on a dreary night of November that I", "My dear sister"]
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    wants = [15, 5, 15]  # the middle row leaves slot 1 after one chunk; the others go on
    llm = LlamaCppWriter(path, n_ctx=128)

    def write(which: list[int]):
        writer = LlamaCppBatchWriter(llm, tok, max_batch=4, row_context=64, chunk=5, start=False)
        moves: list[tuple[int, int]] = []
        lib = writer.lib
        writer.lib = SimpleNamespace(**{n: getattr(lib, n) for n in dir(lib) if n.startswith("llama_")})
        writer.lib.llama_memory_seq_cp = lambda mem, src, dst, p0, p1: (
            moves.append((src, dst)) or lib.llama_memory_seq_cp(mem, src, dst, p0, p1)
        )
        rows = [writer.submit(ids[i], wants[i], gen, seed=10 + i, min_new=wants[i]) for i in which]
        seats: list[list[int]] = []
        run_chunk = writer._run_chunk

        def chunk(active):
            out = run_chunk(active)
            seats.append(sorted(s for s, o in enumerate(writer.owner) if o is not None))
            return out

        writer._run_chunk = chunk
        writer.start()
        texts = [writer.wait(r) for r in rows]
        writer.close()
        return texts, moves, seats

    together, moves, seats = write([0, 1, 2])
    assert moves == [(2, 1)]  # the third row moved into the second row's slot
    assert seats[1] == [0, 1]  # and from the second chunk on the running rows sit side by side
    for i in (0, 2):
        alone, _, _ = write([i])
        assert together[i] == alone[0] and len(alone[0]) == 15


def test_llamacpp_batcher_reuses_the_slot_of_a_row_that_shares_its_start(exported):
    """A scene's next chunk starts with everything the last one held: it takes that row's slot and decodes only
    what is new, not its whole context again."""
    from transformers import AutoTokenizer

    from shelley.generate.llamacpp import LlamaCppBatchWriter, LlamaCppWriter

    run, path = exported
    tok = AutoTokenizer.from_pretrained(run.output)
    gen = run.config().generation.model_copy(update={"max_new_tokens": 8, "num_samples": 1})
    writer = LlamaCppBatchWriter(LlamaCppWriter(path, n_ctx=128), tok, max_batch=3, row_context=64)
    fed: list[int] = []
    real = writer._decode
    writer._decode = lambda items, *, logits: fed.append(len(items)) or real(items, logits=logits)
    prompt = tok("It was on a dreary night of November that I", add_special_tokens=False).input_ids
    first = writer.submit(prompt, 8, gen, seed=1, min_new=8)
    written = writer.wait(first)
    fed.clear()
    second = writer.submit(prompt + written, 8, gen, seed=2, min_new=8)
    writer.wait(second)
    # the slot holds all of the new row's context but its last token (the first row's last draw, decoded with the
    # first step): no prefill, 8 steps of one token
    assert fed == [1] * 8
