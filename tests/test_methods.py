"""shelley.finetune.methods: the fused LoRA layer computes PEFT's LoRA and saves PEFT's adapter."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_causal_lm
from shelley.config import load_config
from shelley.finetune.methods import _lora_linear_function, fused_lora_linear_class, prepare_for_method


def _lora(fused: bool, *sets: str, kind: str = "llama"):
    cfg = load_config(
        None, ["train.method=lora", "train.lora_r=4", "train.lora_alpha=12", f"train.fused_lora={fused}", *sets]
    )
    model = prepare_for_method(tiny_causal_lm(kind, 96, seed=5), cfg)
    torch.manual_seed(6)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # PEFT starts B at zero: give it values so the low-rank path shows in the output
            torch.nn.init.normal_(p, std=0.1)
    return model


def _loss_and_grads(model, ids):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["llama", "gemma3"])  # Gemma 3: one key/value head, sliding windows, GELU
def test_fused_lora_gives_peft_outputs_and_gradients(kind):
    fused, stock = _lora(True, "train.lora_dropout=0", kind=kind), _lora(False, "train.lora_dropout=0", kind=kind)
    layers = [m for m in fused.modules() if isinstance(m, fused_lora_linear_class())]
    assert len(layers) == 14  # 7 projections x 2 blocks
    assert not any(isinstance(m, fused_lora_linear_class()) for m in stock.modules())
    ids = torch.randint(1, 96, (2, 12))
    loss_f, grads_f = _loss_and_grads(fused, ids)
    loss_s, grads_s = _loss_and_grads(stock, ids)
    torch.testing.assert_close(loss_f, loss_s)
    assert grads_f.keys() == grads_s.keys() and len(grads_f) == 28
    for n in grads_s:
        torch.testing.assert_close(grads_f[n], grads_s[n], msg=f"gradient of {n}")


@pytest.mark.parametrize("bias", [True, False])
def test_lora_linear_function_gradients_match_finite_differences(bias):
    # every input trainable (an unfrozen base weight and bias too), so each branch of the backward is checked
    torch.manual_seed(7)
    x, weight, lora_a, lora_b = (
        torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in [(5, 4), (3, 4), (2, 4), (3, 2)]
    )
    b = torch.randn(3, dtype=torch.float64, requires_grad=True) if bias else None
    fn = _lora_linear_function()
    assert torch.autograd.gradcheck(lambda *t: fn.apply(*t, 1.5), (x, weight, b, lora_a, lora_b))
    expected = x @ weight.T + 1.5 * (x @ lora_a.T) @ lora_b.T + (b if bias else 0)
    torch.testing.assert_close(fn.apply(x, weight, b, lora_a, lora_b, 1.5), expected)


def test_fused_lora_saves_an_adapter_plain_peft_loads(tmp_path):
    from peft import PeftModel

    fused = _lora(True, "train.lora_dropout=0").eval()
    fused.save_pretrained(tmp_path / "adapter")
    plain = PeftModel.from_pretrained(tiny_causal_lm("llama", 96, seed=5), tmp_path / "adapter").eval()
    assert not any(isinstance(m, fused_lora_linear_class()) for m in plain.modules())
    ids = torch.randint(1, 96, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, plain(input_ids=ids).logits)
        merged = fused.merge_and_unload()(input_ids=ids).logits
    torch.testing.assert_close(merged, plain(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_fused_lora_under_bf16_autocast_gives_peft_outputs_and_fp32_gradients():
    fused, stock = _lora(True, "train.lora_dropout=0"), _lora(False, "train.lora_dropout=0")
    ids = torch.randint(1, 96, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_f, grads_f = _loss_and_grads(fused, ids)
        loss_s, grads_s = _loss_and_grads(stock, ids)
    loss_fp32, grads_fp32 = _loss_and_grads(_lora(True, "train.lora_dropout=0"), ids)
    assert loss_f != loss_fp32  # the products really ran in bf16
    torch.testing.assert_close(loss_f, loss_s, rtol=2e-3, atol=0)
    for n in grads_s:
        assert grads_f[n].dtype == torch.float32, n  # cast back to the fp32 adapter weights by autograd
        # bf16 rounds in a different order in each, so compare their distances from the exact (fp32) gradient:
        # the fused layer must be about as accurate as PEFT's under the same autocast, and both close
        err_f = (grads_f[n] - grads_fp32[n]).norm() / grads_fp32[n].norm()
        err_s = (grads_s[n] - grads_fp32[n]).norm() / grads_fp32[n].norm()
        assert err_f < 0.05 and err_f < 2 * err_s + 1e-3, f"{n}: fused {err_f:.4f} vs PEFT {err_s:.4f}"


@pytest.mark.parametrize("case", ["dropout", "no dropout", "autocast"])
def test_fused_lora_falls_back_to_peft_where_it_does_not_apply(case, monkeypatch):
    from peft.tuners.lora.layer import Linear

    model = _lora(True, f"train.lora_dropout={0.1 if case == 'dropout' else 0}")
    calls = []
    original = Linear.forward
    monkeypatch.setattr(Linear, "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    ids = torch.randint(1, 96, (1, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        model(input_ids=ids)
    with model.disable_adapter():  # adapters off: PEFT's path (the base layer alone)
        model(input_ids=ids)
    # 14 layers: with dropout every call goes to PEFT; otherwise (autocast too) only the disabled-adapter pass does
    assert len(calls) == (28 if case == "dropout" else 14)


def test_compile_keeps_peft_layers():
    # dynamo compiles PEFT's layers into one graph but recompiles the fused layer per block: compile skips it
    model = _lora(True, "train.lora_dropout=0", "train.compile=true")
    assert not any(isinstance(m, fused_lora_linear_class()) for m in model.modules())
