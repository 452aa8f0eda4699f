"""The BOS token where a model expects it (Gemma, Llama, Mistral) and nowhere else (GPT-2, SmolLM2): every
training window, every scoring window, every prompt and every scene window."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import save_bos_tokenizer, tiny_causal_lm
from shelley.config import GenerationConfig
from shelley.finetune.packing import PackedBlocks
from shelley.generate import fit_prompts, generate_texts
from shelley.models.bos import bos_prefix
from shelley.models.perplexity import perplexity, position_losses


@pytest.fixture(scope="module")
def bos_tok(tmp_path_factory):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(save_bos_tokenizer(tmp_path_factory.mktemp("bos-tokenizer")))
    tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="module")
def plain_tok(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_which_tokenizers_expect_bos(bos_tok, plain_tok, smol_tokenizer):
    assert bos_prefix(bos_tok) == [1] == [bos_tok.bos_token_id]
    assert bos_prefix(plain_tok) == []  # GPT-2 style: BOS = EOS, never added
    assert bos_prefix(smol_tokenizer) == []  # SmolLM2 keeps today's behaviour


def test_every_training_window_opens_with_bos(bos_tok):
    stream = np.arange(2, 42, dtype=np.uint16)  # 40 tokens, no BOS inside
    blocks = PackedBlocks(stream, 8, bos_prefix(bos_tok))
    assert len(blocks) == 40 // 7
    batch = blocks.batch([0, 1, 4]).numpy()
    assert batch.shape == (3, 8) and (batch[:, 0] == 1).all()
    assert batch[1, 1:].tolist() == list(range(9, 16))  # window 1 continues the stream right after window 0
    plain = PackedBlocks(stream, 8).batch([0]).numpy()
    assert plain[0].tolist() == list(range(2, 10))  # no prefix: the windows are as before


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma3"])
def test_scoring_windows_open_with_bos_and_never_score_it(bos_tok, kind):
    from shelley.models.perplexity import windows

    model = tiny_causal_lm(kind, len(bos_tok), seed=1, max_positions=64)
    stream = np.asarray(bos_tok("The storm broke at midnight. " * 12, add_special_tokens=False)["input_ids"])
    plain = perplexity(model, stream, max_length=32, stride=32)
    with_bos = perplexity(model, stream, max_length=32, stride=32, prefix=[1])
    # The BOS takes one place of each 32-token window: 31 stream tokens each, the same targets as 31-token windows.
    assert with_bos["tokens"] == sum(e - first for _, e, first in windows(len(stream), 31, 32))
    assert plain["tokens"] == sum(e - first for _, e, first in windows(len(stream), 32, 32))
    assert with_bos["nll"] != plain["nll"]
    # By hand: the first window's first target, predicted from [BOS, t0].
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([[1, *stream[:31].tolist()]])).logits[0]
    first = -torch.log_softmax(logits[1], -1)[stream[1]].item()
    curve = position_losses(model, stream, window=32, prefix=[1])
    assert curve["windows"] == len(stream) // 32 and len(curve["loss"]) == 31
    if curve["windows"] == 1:
        assert curve["loss"][0] == pytest.approx(first, rel=1e-5)


def test_prompts_open_with_bos_only_where_expected(bos_tok, plain_tok):
    ids, _ = fit_prompts(bos_tok, ["The storm", ""], 32)
    assert ids[0][0] == 1 and ids[0][1:] == bos_tok("The storm", add_special_tokens=False)["input_ids"]
    assert ids[1] == [1]  # an empty prompt is the BOS alone
    ids, _ = fit_prompts(plain_tok, ["The storm"], 32)
    assert ids[0] == plain_tok("The storm", add_special_tokens=False)["input_ids"]
    # A prompt cut to fit keeps its BOS and its last tokens.
    ids, notes = fit_prompts(bos_tok, ["The storm broke at midnight and the oak split"], 5)
    assert ids[0][0] == 1 and len(ids[0]) == 5 and "kept its last 4" in notes[0]
    model = tiny_causal_lm("gemma3", len(bos_tok), seed=2)
    assert generate_texts(model, bos_tok, ["The storm"], GenerationConfig(max_new_tokens=4))[0]


def test_scene_windows_open_with_bos(bos_tok):
    from shelley.generate.scene import TransformersEngine, write_scene

    model = tiny_causal_lm("llama", len(bos_tok), seed=3, max_positions=128)
    engine = TransformersEngine(model, bos_tok, GenerationConfig(do_sample=False, repetition_penalty=1.0))
    firsts, longest = [], []
    inner = engine.continue_ids

    def spy(ids, n, **kw):
        firsts.append(ids[0])
        longest.append(len(ids) + n)
        return inner(ids, n, **kw)

    engine.continue_ids = spy
    scene = write_scene(engine, bos_tok, "The storm", 100, chunk_tokens=16, context_tokens=64)
    assert set(firsts) == {1} and max(longest) <= 128 and scene.drawn_tokens > 64  # the window rolled


def test_bits_per_byte_of_the_scored_text(plain_tok):
    import math

    from shelley.models.perplexity import per_byte, scored_text

    eos = plain_tok.eos_token_id
    a = plain_tok("The storm broke.", add_special_tokens=False)["input_ids"]
    b = plain_tok("I ran out.", add_special_tokens=False)["input_ids"]
    stream = np.asarray([*a, eos, *b, eos])
    text = scored_text(plain_tok, stream)
    first = plain_tok.decode(a[:1])
    assert text == "The storm broke."[len(first) :] + "\n" + "I ran out." + "\n"  # all targets, EOS as a line break
    figures = per_byte({"nll": 1.0, "tokens": 10}, "abcd efgh")
    assert figures["bytes"] == 9 and figures["words"] == 2
    assert figures["bits_per_byte"] == pytest.approx(10 / math.log(2) / 9)
    assert figures["bits_per_word"] == pytest.approx(10 / math.log(2) / 2)
