"""The scratch GPT: exact export to Hugging Face GPT-2, generation, config errors; its BPE tokenizer."""

from __future__ import annotations

import pytest
import torch

from conftest import BOOK_BODY
from shelley.errors import ShelleyError
from shelley.gpt.model import GPT, GPTConfig, from_hf, to_hf
from shelley.gpt.tokenizer import compression, min_vocab_size, save_tokenizer, train_tokenizer

CFG = GPTConfig(vocab_size=300, seq_len=32, n_layers=2, n_heads=4, d_model=32)


@pytest.mark.parametrize("tie", [True, False])
def test_export_logits_equal_gpt2lmheadmodel(tie):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**CFG.__dict__, "tie_weights": tie})).eval()
    hf = to_hf(model).eval()
    ids = torch.randint(0, 300, (3, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits)
    back = from_hf(hf).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits)


def test_export_survives_save_and_load(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = GPT(CFG).eval()
    to_hf(model, eos_token_id=0, bos_token_id=0).save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_loss_is_next_token_cross_entropy():
    torch.manual_seed(2)
    model = GPT(CFG)
    ids = torch.randint(0, 300, (2, 16))
    out = model(ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 300), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    # Untrained, the loss is close to the uniform guess ln(V).
    assert abs(float(out.loss) - torch.log(torch.tensor(300.0)).item()) < 0.5


def test_generate_greedy_and_sampled():
    torch.manual_seed(3)
    model = GPT(CFG).eval()
    prompt = torch.tensor([[5, 6, 7]])
    greedy = model.generate(prompt, 10, temperature=0)
    assert greedy.shape == (1, 13) and torch.equal(greedy, model.generate(prompt, 10, temperature=0))
    torch.manual_seed(4)
    sampled = model.generate(prompt, 40, temperature=1.0, top_k=5, top_p=0.9)
    assert sampled.shape == (1, 43)  # runs past seq_len by cropping the context


def test_config_errors():
    with pytest.raises(ShelleyError, match=r"d_model=30 is not divisible by model\.n_heads=4"):
        GPTConfig(d_model=30, n_heads=4)
    with pytest.raises(ShelleyError, match=r"longer than model\.seq_len"):
        GPT(CFG)(torch.zeros(1, 33, dtype=torch.long))


def test_from_hf_refuses_another_architecture():
    from conftest import tiny_causal_lm

    with pytest.raises(ShelleyError, match="not GPT-2"):
        from_hf(tiny_causal_lm("llama", 50))


def test_tokenizer_roundtrip_non_ascii_and_special_tokens(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = train_tokenizer([BOOK_BODY] * 5, vocab_size=400)
    out = save_tokenizer(tok, tmp_path / "tok")
    loaded = PreTrainedTokenizerFast.from_pretrained(out)
    text = "Élise’s “naïve” café — 北極 🌩 «Frankenstein»"
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.eos_token == "<|endoftext|>" and loaded.pad_token == "<|pad|>"
    assert len(loaded("<|user|>")["input_ids"]) == 1  # chat markers are single tokens
    c = compression(loaded, [BOOK_BODY])
    assert c["chars_per_token"] > 1.5  # merges learned: better than one byte per token


def test_tokenizer_vocab_too_small():
    with pytest.raises(ShelleyError, match=f"need {min_vocab_size()}"):
        train_tokenizer([BOOK_BODY], vocab_size=100)
