"""`shelley export`: GGUF files that transformers (and llama.cpp, in test_llamacpp.py) load as the saved model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import BOOK_BODY, tiny_causal_lm

TEXTS = [line for line in BOOK_BODY.splitlines() if len(line) > 40]


def _run(tmp_path_factory, tiny_tokenizer_dir, kind: str):
    """A finished `shelley train` run of a tiny random model of ``kind`` (4 full fine-tune steps), evaluated."""
    from transformers import AutoTokenizer

    from shelley.config import load_config
    from shelley.eval.evaluate import evaluate_run
    from shelley.eval.report import write_eval
    from shelley.finetune.loop import train
    from shelley.run import Run

    root = tmp_path_factory.mktemp(f"export-{kind}")
    model = root / "base"
    # GPT-2 with 1024 positions, as GPT-2 and DistilGPT-2 have: transformers' GGUF loader reads GPT-2's context
    # length into n_ctx and builds 1024 position embeddings whatever the file says (llama.cpp reads it right).
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tiny_causal_lm(kind, len(tok), max_positions=1024 if kind == "gpt2" else 128).save_pretrained(model)
    tok.save_pretrained(model)
    sets = [f"model.name={model}", "model.max_length=32", "train.method=full", "train.steps=4", "train.eval_every=4"]
    sets += ["train.micro_batch_size=4", "train.learning_rate=3e-3", "train.warmup_steps=1", "eval.stride=16"]
    sets += ["eval.prompts=[The storm, I was]", "eval.samples_per_prompt=1", "generation.max_new_tokens=8"]
    train(load_config(None, sets), TEXTS * 4, TEXTS[:3], root / "run", show_progress=False)
    run = Run.open(root / "run")
    write_eval(run, evaluate_run(run)[0])
    return run


@pytest.fixture(scope="module", params=["llama", "mistral", "gpt2"])  # Mistral is written as llama.cpp's llama
def trained(request, tmp_path_factory, tiny_tokenizer_dir, shelley_home):
    return _run(tmp_path_factory, tiny_tokenizer_dir, request.param)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits[0].float()


def test_f16_gguf_loads_in_transformers_with_the_saved_models_logits(trained):
    """Tolerance: f16 weights move a tiny model's logits by at most 2e-3 (logits of order 0.5 here)."""
    from transformers import AutoModelForCausalLM

    from shelley.export import export_run

    path = export_run(trained, "gguf", quant="f16")
    assert path == trained.root / "export" / f"{trained.root.name}-f16.gguf"
    saved = AutoModelForCausalLM.from_pretrained(trained.output).eval()
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor([list(range(3, 27))])
    a, b = _logits(saved, ids), _logits(loaded, ids)
    assert (a - b).abs().max().item() <= 2e-3
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_q8_0_is_close_to_f16_in_perplexity_and_top1(trained):
    """q8_0 within 2% of f16 in perplexity on the run's validation tokens, and top-1 agreement >= 98%."""
    from transformers import AutoModelForCausalLM

    from shelley.eval.evaluate import cached_stream
    from shelley.export import export_run

    stream = torch.tensor(np.asarray(cached_stream(trained)[:32], dtype=np.int64))[None]
    out = {}
    for quant in ("f16", "q8_0"):
        path = export_run(trained, "gguf", quant=quant, overwrite=True)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        out[quant] = _logits(model.eval(), stream)
    ppl = {q: torch.exp(torch.nn.functional.cross_entropy(lg[:-1], stream[0, 1:])).item() for q, lg in out.items()}
    assert abs(ppl["q8_0"] / ppl["f16"] - 1) <= 0.02
    agree = (out["q8_0"].argmax(-1) == out["f16"].argmax(-1)).float().mean().item()
    assert agree >= 0.98
    assert path.stat().st_size < (trained.root / "export" / f"{trained.root.name}-f16.gguf").stat().st_size


def test_gguf_carries_tokenizer_sampling_defaults_and_provenance(trained):
    from gguf import GGUFReader

    from shelley.export import export_run

    path = export_run(trained, "gguf", quant="f16", overwrite=True)
    fields = GGUFReader(path).fields

    def text(key: str) -> str:
        f = fields[key]
        return bytes(f.parts[f.data[0]]).decode()

    assert text("tokenizer.ggml.model") == "gpt2" and text("tokenizer.ggml.pre") == "gpt-2"
    rows = json.loads((trained.output / "config.json").read_text())["vocab_size"]
    assert len(fields["tokenizer.ggml.tokens"].data) == rows  # one token per embedding row
    assert text("shelley.method") == "full" and text("shelley.base_model").endswith("base")
    ev = trained.eval_result()
    assert float(fields["shelley.eval.perplexity"].parts[-1][0]) == pytest.approx(ev.perplexity.finetuned.perplexity)


def test_ollama_folder_has_the_gguf_and_a_modelfile_with_the_eval_sampling(trained):
    from shelley.export import export_run

    folder = export_run(trained, "ollama", quant="q8_0")
    gen = trained.config().generation
    modelfile = (folder / "Modelfile").read_text()
    gguf_name = f"{trained.root.name}-q8_0.gguf"
    assert (folder / gguf_name).is_file() and f"FROM ./{gguf_name}" in modelfile
    assert f"PARAMETER temperature {gen.temperature}" in modelfile and f"PARAMETER top_p {gen.top_p}" in modelfile
    assert 'PARAMETER stop "<|endoftext|>"' in modelfile and 'TEMPLATE """{{ .Prompt }}"""' in modelfile


def test_lmstudio_tree(trained):
    from shelley.export import export_run

    folder = export_run(trained, "lmstudio")
    assert (folder / "shelley" / f"{trained.root.name}-GGUF" / f"{trained.root.name}-f16.gguf").is_file()


def test_export_bad_input_is_one_line_and_writes_nothing(cli, trained, tmp_path):
    res = cli("export", trained.root, "--quant", "q2_x", "--out", tmp_path / "m.gguf")
    assert res.exit_code == 2 and "unknown quant type 'q2_x'; use one of f16, q8_0, q4_k_m" in res.stderr
    res = cli("export", trained.root, "--format", "onnx", "--out", tmp_path / "m.gguf")
    assert res.exit_code == 2 and "unknown export format 'onnx'" in res.stderr
    (tmp_path / "taken.gguf").write_text("mine")
    res = cli("export", trained.root, "--out", tmp_path / "taken.gguf")
    assert res.exit_code == 2 and "already exists; pass --overwrite" in res.stderr
    assert (tmp_path / "taken.gguf").read_text() == "mine"
    res = cli("export", tmp_path / "nothing-here")
    assert res.exit_code == 2 and "run dir not found" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.gguf"]
    assert "Traceback" not in res.stderr


def test_an_architecture_the_writer_lacks_is_named_with_the_supported_ones(tmp_path):
    from shelley.errors import ShelleyError
    from shelley.export.gguf import check_export

    supported = "supported: gemma3_text, gpt2, llama, mistral"
    with pytest.raises(ShelleyError, match=rf"cannot export a 'qwen2' model to GGUF; {supported}"):
        check_export("qwen2", "f16")


def test_the_cli_writes_the_file_and_says_how_to_run_it(cli, trained, tmp_path):
    out = tmp_path / "m.gguf"
    res = cli("export", trained.root, "--out", out)
    assert res.exit_code == 0, res.stderr
    assert out.is_file() and json.dumps(str(out))[1:-1] in " ".join(res.stdout.split())
    assert "llama-cli -m" in res.stdout


def test_the_model_card_says_how_to_run_it_locally(trained):
    from shelley.hub.card import render_model_card

    card = render_model_card(trained, name="frankenstein-tiny")
    assert "## Run it locally" in card
    assert "llama-cli -m frankenstein-tiny/export/frankenstein-tiny-q8_0.gguf" in card
    assert "ollama create frankenstein-tiny -f Modelfile" in card


def test_export_to_an_unwritable_place_or_of_an_untrained_run_is_named(cli, trained, tmp_path, unwritable_dir):
    res = cli("export", trained.root, "--out", unwritable_dir / "m.gguf")
    assert res.exit_code == 2 and "m.gguf" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "untrained").mkdir()
    (tmp_path / "untrained" / "config.yaml").write_text("{}")
    res = cli("export", tmp_path / "untrained")
    assert res.exit_code == 2 and "has no trained model yet" in res.stderr


def test_the_gguf_asks_llamacpp_for_bos_exactly_when_the_model_expects_it(tmp_path):
    import gguf
    from transformers import AutoTokenizer

    from conftest import save_bos_tokenizer, save_tiny_tokenizer, tiny_causal_lm
    from shelley.export.gguf import write_gguf

    for save, expect in ((save_bos_tokenizer, True), (save_tiny_tokenizer, False)):
        tok = AutoTokenizer.from_pretrained(save(tmp_path / save.__name__))
        path = write_gguf(tiny_causal_lm("llama", len(tok)), tok, tmp_path / f"{expect}.gguf", quant="f16", metadata={})
        field = gguf.GGUFReader(path).fields["tokenizer.ggml.add_bos_token"]
        assert bool(field.parts[field.data[0]][0]) is expect
