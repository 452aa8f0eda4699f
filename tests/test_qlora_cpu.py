"""QLoRA for real on CPU: tiny Mistral and Llama loaded in 4-bit NF4 by bitsandbytes' CPU backend, trained through
the shared loop, saved as a PEFT adapter, reloaded onto a fresh 4-bit base, resumed exactly, and used by eval and
write. bitsandbytes is a dev dependency, so these run wherever the suite runs."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import BOOK_BODY, save_tiny_model, set_flags, write
from shelley.config import load_config
from shelley.data.ingest import snippets_from_book
from shelley.errors import ShelleyError
from shelley.finetune.loop import train
from shelley.run import Run

TEXTS = [s.text for s in snippets_from_book(BOOK_BODY * 4)]


@pytest.fixture(scope="module", params=["mistral", "llama"])
def base(request, tmp_path_factory, tiny_tokenizer_dir):
    # 64 wide, not the usual 32: on CPUs with AVX512-BF16 bitsandbytes repacks 4-bit weights for its bf16 kernel
    # in blocks of 64 input features, and a narrower layer fails there ("shape '[32, 0]' is invalid").
    out = tmp_path_factory.mktemp("qlora") / request.param
    return save_tiny_model(request.param, tiny_tokenizer_dir, out, hidden=64)


def _cfg(model, **extra):
    sets = [
        "train.method=qlora",
        f"model.name={model}",
        "model.max_length=32",
        "train.steps=8",
        "train.micro_batch_size=4",
        "train.learning_rate=1e-2",
        "train.warmup_steps=1",
        "train.eval_every=4",
        "train.sample_every=1000",
        "train.checkpoint_every=4",
        "eval.stride=16",
    ]
    return load_config(overrides=sets + [f"{k}={v}" for k, v in extra.items()])


def _four_bit(model) -> dict[str, torch.Tensor]:
    """The packed 4-bit weights of every bitsandbytes layer, by the name it had before PEFT wrapped it."""
    return {
        n.removeprefix("base_model.model.").replace(".base_layer", ""): m.weight.detach().clone()
        for n, m in model.named_modules()
        if type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes")
    }


def test_qlora_trains_on_cpu_with_a_frozen_4bit_base(tmp_path, base):
    from shelley.finetune.methods import load_base_model

    cfg = _cfg(base)
    model = load_base_model(cfg)
    packed = _four_bit(model)
    assert packed and all(t.dtype == torch.uint8 for t in packed.values())  # NF4, two weights a byte
    result = train(cfg, TEXTS, TEXTS[:6], tmp_path / "run", model=model, show_progress=False)
    assert result.evals[-1]["val_loss"] < result.evals[0]["val_loss"]
    after = _four_bit(model)
    assert after.keys() == packed.keys() and all(torch.equal(after[k], packed[k]) for k in packed)  # frozen
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    adapter = Run.for_training(tmp_path / "run").adapter_dir
    assert (adapter / "adapter_model.safetensors").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_a_4bit_model_the_caller_loaded_keeps_its_layout_through_validation(tmp_path, base, monkeypatch):
    """A model passed to train() gets the same guard as one shelley loads: on a CPU with AVX512-BF16, bitsandbytes
    would repack it for its bf16 inference kernel at the first no-grad eval-mode forward (the validation), rounding
    the frozen base's scales, and the next steps would run through a kernel without a backward."""
    import bitsandbytes.nn.modules as bnb_modules
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    repacked = []
    convert = bnb_modules._convert_weight_packed_for_cpu

    def counted(*args, **kwargs):
        repacked.append(1)
        return convert(*args, **kwargs)

    monkeypatch.setattr(bnb_modules, "_convert_weight_packed_for_cpu", counted)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=quant, dtype=torch.float32)
    train(_cfg(base, **{"train.steps": 4, "train.eval_every": 2}), TEXTS, TEXTS[:6], tmp_path / "run", model=model,
          show_progress=False)  # fmt: skip
    assert not repacked
    with pytest.raises(ShelleyError, match=r"given to train\(\) has no 4-bit layers: .*load_in_4bit=True.*method=lora"):
        train(_cfg(base), TEXTS, TEXTS[:6], tmp_path / "plain", model=AutoModelForCausalLM.from_pretrained(base),
              show_progress=False)  # fmt: skip


def test_the_adapter_reloads_onto_a_fresh_4bit_base_with_equal_logits(tmp_path, base):
    from peft import PeftModel, prepare_model_for_kbit_training

    from shelley.finetune.methods import load_base_model

    cfg = _cfg(base)
    model = load_base_model(cfg)
    train(cfg, TEXTS, TEXTS[:6], tmp_path / "run", model=model, show_progress=False)
    # prepared as training prepared it: PEFT's k-bit prep puts the layers left unquantized (embeddings, norms, head)
    # in fp32, which the base loads in QLoRA's compute dtype (bf16 on a CPU with bf16 hardware)
    fresh_base = prepare_model_for_kbit_training(load_base_model(cfg), use_gradient_checkpointing=False)
    fresh = PeftModel.from_pretrained(fresh_base, str(tmp_path / "run" / "adapter")).eval()
    ids = torch.tensor([list(range(5, 29))])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, fresh(ids).logits)


def test_resume_after_a_stop_is_exact(tmp_path, base):
    from safetensors.torch import load_file

    cfg = _cfg(base)
    train(cfg, TEXTS, TEXTS[:6], tmp_path / "straight", show_progress=False)
    train(cfg, TEXTS, TEXTS[:6], tmp_path / "split", show_progress=False, stop_after=5)
    train(cfg, TEXTS, TEXTS[:6], tmp_path / "split", show_progress=False, resume=True)
    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "split" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_eval_and_write_load_the_qlora_run(cli, tmp_path, base):
    corpus = write(tmp_path / "book.txt", BOOK_BODY * 6)
    sets = set_flags("model.max_length=32", "train.steps=4", "train.micro_batch_size=4", "eval.stride=16")
    sets += set_flags("data.split=random", "generation.max_new_tokens=6", "eval.prompts=[The storm]")
    res = cli("train", corpus, "--model", base, "--method", "qlora", "--run-dir", tmp_path / "run", *sets)
    assert res.exit_code == 0, res.stderr
    res = cli("eval", tmp_path / "run")
    assert res.exit_code == 0, res.stderr
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert ev["method"] == "qlora" and ev["perplexity"]["finetuned"]["tokens"] > 0
    res = cli("write", tmp_path / "run", "The storm", "-n", "6", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["samples"][0]["text"] is not None


def test_qlora_bad_input_is_one_line(tmp_path, tiny_tokenizer_dir, monkeypatch):
    from conftest import tiny_causal_lm
    from shelley.finetune.methods import check_4bit, load_base_model, qlora_compute_dtype
    from shelley.runtime import cpu_flags

    gpt2 = save_tiny_model("gpt2", tiny_tokenizer_dir, tmp_path / "gpt2")
    check_4bit(load_base_model(_cfg(gpt2)), "gpt2")  # GPT-2's Conv1D layers quantize too
    with pytest.raises(ShelleyError, match=r"no linear layers bitsandbytes can quantize .* train\.method=lora"):
        check_4bit(tiny_causal_lm("llama", 300), "a model left in fp32")
    if not cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        with pytest.raises(ShelleyError, match=r"no bf16 hardware; .* train\.precision=auto"):
            qlora_compute_dtype("bf16")
    assert qlora_compute_dtype("fp32") == torch.float32
    quantized = tmp_path / "q"
    quantized.mkdir()
    (quantized / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {"bits": 4}}))
    with pytest.raises(ShelleyError, match=r"saved quantized; --method full needs full-precision weights"):
        load_base_model(load_config(overrides=[f"model.name={quantized}", "train.method=full"]))
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes.functional", None)
    with pytest.raises(ShelleyError, match=r"method qlora needs bitsandbytes"):
        load_base_model(_cfg(gpt2))
