"""The training loop on tiny random models built here (GPT-2, Llama and Mistral configs)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import BOOK_BODY, tiny_causal_lm, train_losses
from shelley.config import load_config
from shelley.data.ingest import snippets_from_book
from shelley.errors import ShelleyError
from shelley.finetune.loop import train

TEXTS = [s.text for s in snippets_from_book(BOOK_BODY * 4)]


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _tiny_model(kind: str, vocab: int, seed: int = 0):
    return tiny_causal_lm(kind, vocab, seed=seed)


def _train(cfg, run, model, tok, **kwargs):
    """``train`` on the fixture texts (the first six also serve as validation), quietly."""
    return train(cfg, TEXTS, TEXTS[:6], run, model=model, tokenizer=tok, show_progress=False, **kwargs)


def _cfg(method: str, **extra):
    sets = [
        f"train.method={method}",
        "model.name=tiny",
        "model.max_length=32",
        "train.steps=8",
        "train.micro_batch_size=4",
        "train.learning_rate=3e-3",
        "train.warmup_steps=1",
        "train.eval_every=4",
        "train.sample_every=1000",
        "train.checkpoint_every=4",
        "eval.stride=16",
        "train.lora_dropout=0.1",
    ]
    sets += [f"{k}={v}" for k, v in extra.items()]
    return load_config(overrides=sets)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "mistral"])
def test_full_finetune_changes_every_param_and_loss_falls(tmp_path, tiny_tokenizer_dir, kind):
    tok = _tokenizer(tiny_tokenizer_dir)
    model = _tiny_model(kind, len(tok))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = _cfg("full", **{"train.steps": 20, "train.learning_rate": 1e-2})
    result = _train(cfg, tmp_path / "run", model, tok)
    after = dict(model.named_parameters())
    unchanged = [n for n in before if torch.equal(before[n], after[n].detach())]
    assert unchanged == []
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert losses[-1] < losses[0] - 0.5
    assert result.evals[-1]["val_loss"] < result.evals[0]["val_loss"] + 1e-6
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # the summary eval reports and the pipeline read; written atomically, so no temp file is left beside it
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["steps"] == result.steps == 20 and summary["tokens_per_second"] > 0
    assert not [f.name for f in (tmp_path / "run").iterdir() if f.name.startswith(".")]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_lora_changes_only_adapter_params(tmp_path, tiny_tokenizer_dir, kind):
    tok = _tokenizer(tiny_tokenizer_dir)
    model = _tiny_model(kind, len(tok))
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(_cfg("lora"), tmp_path / "run", model, tok)
    # `model` is the same base module, now wrapped by PEFT: its base weights must be bit-identical.
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        clean = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(p.detach(), base_before[clean]), name
    lora = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora and all(p.abs().sum() > 0 for p in lora.values())  # B starts at zero, so it moved
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_lora_layers_adapts_only_the_last_blocks(tmp_path, tiny_tokenizer_dir, kind):
    import re

    tok = _tokenizer(tiny_tokenizer_dir)
    model = _tiny_model(kind, len(tok))  # 2 blocks
    _train(_cfg("lora", **{"train.lora_layers": 1, "train.steps": 2}), tmp_path / "run", model, tok)
    blocks = {int(re.search(r"\.(\d+)\.", n).group(1)) for n, _ in model.named_parameters() if "lora_" in n}
    assert blocks == {1}


def test_lora_layers_beyond_the_model(tmp_path, tiny_tokenizer_dir):
    tok = _tokenizer(tiny_tokenizer_dir)
    with pytest.raises(ShelleyError, match=r"train.lora_layers=5 but the model has 2 transformer blocks"):
        _train(_cfg("lora", **{"train.lora_layers": 5}), tmp_path / "run", _tiny_model("llama", len(tok)), tok)


def test_lora_merge_writes_a_full_model(tmp_path, tiny_tokenizer_dir):
    tok = _tokenizer(tiny_tokenizer_dir)
    _train(_cfg("lora", **{"train.merge": "true"}), tmp_path / "run", _tiny_model("llama", len(tok)), tok)
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, tiny_tokenizer_dir, method):
    tok = _tokenizer(tiny_tokenizer_dir)
    cfg = _cfg(method)
    straight = _tiny_model("llama", len(tok), seed=1)
    _train(cfg, tmp_path / "a", straight, tok)

    first = _tiny_model("llama", len(tok), seed=1)
    part = _train(cfg, tmp_path / "b", first, tok, stop_after=3)
    assert part.steps == 3 and (tmp_path / "b" / "checkpoints" / "step-000003").exists()
    resumed = _tiny_model("llama", len(tok), seed=99)  # different init: everything must come from the checkpoint
    result = _train(cfg, tmp_path / "b", resumed, tok, resume=True)
    assert result.steps == 8
    a = dict(straight.named_parameters())
    for name, p in resumed.named_parameters():
        torch.testing.assert_close(p, a[name], rtol=0, atol=0)

    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")


def test_resume_without_checkpoint(tmp_path, tiny_tokenizer_dir):
    (tmp_path / "run").mkdir()
    with pytest.raises(ShelleyError, match="no checkpoint to resume from"):
        train(_cfg("full"), TEXTS, TEXTS, tmp_path / "run", resume=True, tokenizer=_tokenizer(tiny_tokenizer_dir))


def test_resume_with_a_different_config(tmp_path, tiny_tokenizer_dir):
    tok = _tokenizer(tiny_tokenizer_dir)
    _train(_cfg("full"), tmp_path / "run", _tiny_model("gpt2", len(tok)), tok, stop_after=4)
    with pytest.raises(ShelleyError, match=r"differs from the checkpoint's in train\.learning_rate"):
        _train(
            _cfg("full", **{"train.learning_rate": 1e-2}),
            tmp_path / "run",
            _tiny_model("gpt2", len(tok)),
            tok,
            resume=True,
        )


def test_lora_targets_absent_from_the_model(tmp_path, tiny_tokenizer_dir):
    tok = _tokenizer(tiny_tokenizer_dir)
    cfg = _cfg("lora", **{"train.lora_target_modules": "[q_proj]"})
    with pytest.raises(ShelleyError, match=r"not in this model; its linear layers are: c_attn, c_fc, c_proj"):
        train(
            cfg, TEXTS, TEXTS, tmp_path / "run", model=_tiny_model("gpt2", len(tok)), tokenizer=tok, show_progress=False
        )


def test_qlora_without_bitsandbytes_fails_cleanly(tmp_path, tiny_tokenizer_dir, monkeypatch):
    tok = _tokenizer(tiny_tokenizer_dir)
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes.functional", None)  # as if not installed
    with pytest.raises(ShelleyError, match=r"qlora needs bitsandbytes.*train\.method=lora"):
        train(_cfg("qlora"), TEXTS, TEXTS, tmp_path / "run", tokenizer=tok, show_progress=False)


def test_nan_loss_stops_and_names_the_step(tmp_path, tiny_tokenizer_dir):
    tok = _tokenizer(tiny_tokenizer_dir)
    model = _tiny_model("gpt2", len(tok))
    with pytest.raises(ShelleyError, match=r"loss became (nan|inf) at step \d+; training stopped"):
        _train(_cfg("full", **{"train.learning_rate": 1e9, "train.max_grad_norm": 1e12}), tmp_path / "run", model, tok)


def test_out_of_memory_is_advice_and_keeps_the_last_checkpoint(tmp_path, tiny_tokenizer_dir, monkeypatch):
    tok = _tokenizer(tiny_tokenizer_dir)
    model = _tiny_model("llama", len(tok))
    forward = type(model).forward
    calls = {"n": 0}

    def forward_that_runs_out(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4 and self.training:  # after the step-4 checkpoint, like a longer batch would
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", forward_that_runs_out)
    run = tmp_path / "run"
    with pytest.raises(ShelleyError) as err:
        _train(_cfg("full"), run, model, tok)
    msg = str(err.value)
    assert "out of memory at step 5" in msg and "train.micro_batch_size=2" in msg and "grad_accum=2" in msg
    assert "step-000004" in msg
    assert (run / "checkpoints" / "step-000004" / "trainer_state.json").exists()


def test_adamw_is_fused_on_cpu_and_matches_the_foreach_kernel():
    from shelley.finetune.loop import _adamw

    torch.manual_seed(0)
    w0, grads = torch.randn(16, 8), [torch.randn(16, 8) for _ in range(5)]
    finals = []
    for make in (lambda g: _adamw(g, 1e-2, "cpu"), lambda g: torch.optim.AdamW(g, lr=1e-2, foreach=True)):
        w = torch.nn.Parameter(w0.clone())
        opt = make([{"params": [w], "weight_decay": 0.01}])
        for g in grads:
            w.grad = g.clone()
            opt.step()
        finals.append(w.detach())
    assert _adamw([{"params": [torch.nn.Parameter(w0.clone())]}], 1e-2, "cpu").defaults["fused"]
    torch.testing.assert_close(finals[0], finals[1])
    assert not torch.equal(finals[0], w0)  # the steps did move the weight
    # A device or dtype without a fused kernel gets the default kernel instead of failing at the first step.
    assert not _adamw([{"params": [torch.nn.Parameter(w0.clone())]}], 1e-2, "xla").defaults["fused"]
    complex_w = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    assert not _adamw([{"params": [complex_w]}], 1e-2, "cpu").defaults["fused"]


@pytest.mark.parametrize("clock", ["wall", "train"])
def test_budget_clock_decides_whether_evaluations_count(tmp_path, tiny_tokenizer_dir, monkeypatch, clock):
    import time

    import shelley.models.perplexity as ppl

    scored = ppl.perplexity
    monkeypatch.setattr(ppl, "perplexity", lambda *a, **k: time.sleep(0.5) or scored(*a, **k))  # a slow eval
    tok = _tokenizer(tiny_tokenizer_dir)
    cfg = _cfg("full", **{"train.eval_every": 1, "train.time_budget_s": 2.0, "train.budget_clock": clock})
    result = _train(cfg, tmp_path / "run", _tiny_model("llama", len(tok)), tok)
    # 8 tiny steps take well under 2 s; 8 evaluations take 4 s: only the wall clock counts them
    if clock == "train":
        assert result.steps == 8
    else:
        assert 1 <= result.steps <= 5


def test_bf16_training_is_validated_in_the_saved_weights_precision(tmp_path, tiny_tokenizer_dir):
    """Mixed precision trains in bf16 autocast, but the logged validation perplexity is the saved fp32 model's:
    accelerate's autocast wrapper is lifted while evaluating, and put back for the steps after."""
    from transformers import AutoModelForCausalLM

    from shelley.finetune.packing import encode_stream
    from shelley.models.perplexity import perplexity

    tok = _tokenizer(tiny_tokenizer_dir)
    runs = {}
    for precision in ("bf16", "fp32"):
        cfg = _cfg("full", **{"train.precision": precision, "train.steps": 8, "train.eval_every": 4})
        runs[precision] = _train(cfg, tmp_path / precision, _tiny_model("llama", len(tok)), tok)
    bf16 = runs["bf16"]
    # bf16 really trained: the same seed and data in fp32 end elsewhere (after step 4's evaluation too, so the
    # autocast wrapper came back)
    assert bf16.evals[0]["val_loss"] != runs["fp32"].evals[0]["val_loss"]
    assert bf16.evals[-1]["val_loss"] != runs["fp32"].evals[-1]["val_loss"]

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16" / "model").eval()
    assert saved.dtype == torch.float32
    stream = encode_stream(TEXTS[:6], tok, tmp_path / "cache", "validation")
    expected = perplexity(saved, stream, max_length=32, stride=16, batch_size=4)
    assert bf16.evals[-1]["val_perplexity"] == pytest.approx(expected["perplexity"], rel=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the logged figure would be if scored in bf16
        in_bf16 = perplexity(saved, stream, max_length=32, stride=16, batch_size=4)
    # (a tiny random model's logits are small, so bf16 moves its perplexity only in the 6th digit)
    assert in_bf16["perplexity"] != pytest.approx(expected["perplexity"], rel=1e-7)


def test_runs_in_one_process_may_each_have_their_own_precision(tmp_path, tiny_tokenizer_dir):
    # accelerate refuses a second Accelerator with another mixed precision in the same process (a notebook
    # training bf16 then fp32 would stop with "AcceleratorState has already been initialized")
    tok = _tokenizer(tiny_tokenizer_dir)
    for i, precision in enumerate(("bf16", "fp32", "bf16")):
        cfg = _cfg("full", **{"train.precision": precision, "train.steps": 1})
        assert _train(cfg, tmp_path / str(i), _tiny_model("llama", len(tok)), tok).steps == 1


def test_attention_kernel_of_the_training_forward():
    from shelley.finetune.methods import training_attention

    def choice(method="full", device="cpu", **sets):
        return training_attention(_cfg(method, **sets), device)

    # eager exactly where SDPA's CPU kernel is slow: the bf16 training forward on a CPU
    assert choice(**{"train.precision": "bf16"}) == "eager"
    assert choice("lora", **{"train.precision": "bf16"}) == "eager"
    assert choice(**{"train.precision": "fp32"}) is None
    assert choice(device="cuda", **{"train.precision": "bf16"}) is None
    assert choice("scratch", **{"train.precision": "bf16"}) is None  # our GPT has its own attention
    # a choice the user set is kept wherever it runs
    assert choice(**{"train.precision": "bf16", "train.attention": "sdpa"}) == "sdpa"
    assert choice(device="cuda", **{"train.attention": "eager"}) == "eager"


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_bf16_steps_run_eager_attention_the_model_keeps_its_own(tmp_path, tiny_tokenizer_dir, monkeypatch, precision):
    """The bf16 steps on a CPU run eager attention; validation, samples and the returned model use the model's
    own kernel (SDPA), so a logged perplexity is the saved model's."""
    import transformers.models.llama.modeling_llama as llama

    calls = []  # whether autocast was on at each eager attention call: on in the steps, off in validation
    eager = llama.eager_attention_forward

    def counting(*args, **kwargs):
        calls.append(torch.is_autocast_enabled("cpu"))
        return eager(*args, **kwargs)

    monkeypatch.setattr(llama, "eager_attention_forward", counting)
    tok = _tokenizer(tiny_tokenizer_dir)
    model = _tiny_model("llama", len(tok))
    assert model.config._attn_implementation == "sdpa"
    sets = {"train.precision": precision, "train.steps": 4, "train.eval_every": 2, "train.sample_every": 2}
    cfg = _cfg("full", **sets)

    def sampler(m, t, prompts, g):  # one forward of the model the samples are drawn from
        with torch.no_grad():
            m(torch.tensor([[1, 2, 3]]))
        return ["x"] * len(prompts)

    result = _train(cfg, tmp_path / "run", model, tok, sampler=sampler)
    assert len(result.evals) == 2
    if precision == "bf16":
        assert calls and all(calls)  # every step's layers (2 layers x 4 steps), never a validation batch
        assert len(calls) == 2 * 4
    else:
        assert calls == []
    assert model.config._attn_implementation == "sdpa"


def test_an_interrupted_bf16_run_gives_the_model_its_own_attention_back(tmp_path, tiny_tokenizer_dir):
    tok = _tokenizer(tiny_tokenizer_dir)
    model = _tiny_model("llama", len(tok))
    cfg = _cfg("full", **{"train.precision": "bf16", "train.steps": 4})
    result = _train(cfg, tmp_path / "run", model, tok, stop_after=1)
    assert result.stop_reason == "interrupted" and result.steps == 1
    assert model.config._attn_implementation == "sdpa"
