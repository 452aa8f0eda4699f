"""shelley.finetune.loss: the fused head + cross-entropy gives the model's own loss and gradients."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_causal_lm
from shelley.finetune.loss import IGNORE_INDEX, can_fuse, causal_lm_loss, linear_cross_entropy


@pytest.mark.parametrize("head_trains", [True, False])  # two sweeps (full fine-tune) / one online sweep (LoRA)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk", [7, 64, 1000])  # slices that split the vocabulary unevenly, evenly, not at all
def test_linear_cross_entropy_matches_the_unfused_loss_and_gradients(head_trains, with_bias, chunk):
    torch.manual_seed(0)
    n, c, v = 37, 16, 64
    hidden = torch.randn(n, c, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, c, dtype=torch.float64, requires_grad=head_trains)
    bias = torch.randn(v, dtype=torch.float64, requires_grad=head_trains) if with_bias else None
    targets = torch.randint(0, v, (n,))
    targets[[3, 20]] = IGNORE_INDEX
    targets[5] = v - 1  # the last column of the last (possibly short) slice

    ref = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden, weight, bias), targets)
    inputs = [t for t in (hidden, weight, bias) if t is not None and t.requires_grad]
    ref_grads = torch.autograd.grad(ref * 3, inputs)
    got = linear_cross_entropy(hidden, weight, bias, targets, chunk=chunk)
    got_grads = torch.autograd.grad(got * 3, inputs)

    torch.testing.assert_close(got, ref)
    for g, r in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)
    assert got_grads[0][3].abs().sum() == 0  # an ignored position gets no gradient


@pytest.mark.parametrize("head_trains", [True, False])
def test_linear_cross_entropy_under_bf16_autocast_is_what_autocast_gives_the_unfused_head(head_trains):
    # autocast runs nn.Linear in bf16 and cross_entropy in fp32: the fused loss must give the same numbers, and
    # fp32 gradients for fp32 inputs
    torch.manual_seed(2)
    n, c, v = 50, 32, 300
    hidden = torch.randn(n, c, requires_grad=True)
    weight = torch.randn(v, c, requires_grad=head_trains)
    targets = torch.randint(0, v, (n,))
    inputs = [t for t in (hidden, weight) if t.requires_grad]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden, weight), targets)
        got = linear_cross_entropy(hidden, weight, None, targets, chunk=64)
    ref_grads, got_grads = torch.autograd.grad(ref, inputs), torch.autograd.grad(got, inputs)
    fp32 = linear_cross_entropy(hidden, weight, None, targets, chunk=64)

    assert got.dtype == torch.float32 and got != fp32  # a fp32 loss from bf16 products
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=0)
    for g, r in zip(got_grads, ref_grads, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, r, atol=1e-2 * r.abs().max().item(), rtol=0)


def test_linear_cross_entropy_with_every_target_ignored_is_zero():
    hidden = torch.randn(4, 8, requires_grad=True)
    loss = linear_cross_entropy(hidden, torch.randn(10, 8), None, torch.full((4,), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0 and hidden.grad.abs().sum() == 0


def test_no_grad_keeps_nothing_and_gives_the_same_loss():
    torch.manual_seed(1)
    hidden, weight, targets = torch.randn(9, 8), torch.randn(30, 8), torch.randint(0, 30, (9,))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, None, targets, chunk=8)
    ref = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets)
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "mistral", "gemma3"])
def test_causal_lm_loss_equals_the_models_own_loss_and_gradients(kind):
    model = tiny_causal_lm(kind, 96, seed=3).eval()  # eval: GPT-2's dropout would make the two passes differ
    assert can_fuse(model)
    ids = torch.randint(1, 96, (3, 20))

    ref = model(input_ids=ids, labels=ids).loss
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    got = causal_lm_loss(model, ids, inner=model)
    got.backward()
    torch.testing.assert_close(got, ref)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], msg=f"gradient of {n}")
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)  # the head is back after the swap


def test_causal_lm_loss_through_peft_lora():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_causal_lm("llama", 96, seed=4),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    assert can_fuse(model)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # PEFT starts B at zero, which would make every lora_A gradient zero
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(1, 96, (2, 16))
    ref = model(input_ids=ids, labels=ids).loss
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    got = causal_lm_loss(model, ids, inner=model)  # the head is frozen: the one-sweep path
    got.backward()
    torch.testing.assert_close(got, ref)
    assert len(ref_grads) == 8
    params = dict(model.named_parameters())
    for n, g in ref_grads.items():
        torch.testing.assert_close(params[n].grad, g, msg=f"gradient of {n}")


def test_can_fuse_refuses_heads_it_would_get_wrong():
    model = tiny_causal_lm("llama", 96)
    model.config.final_logit_softcapping = 30.0  # Gemma-2 style: logits are capped after the head
    assert not can_fuse(model)
    model.config.final_logit_softcapping = None
    model.config.model_type = "gemma2"
    assert not can_fuse(model)


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2", "lora"])
def test_scoring_without_the_full_logits_matches_them(kind, monkeypatch):
    """``next_token_nll`` (perplexity, the context curve) equals the cross-entropy of the full logits, while the
    head never sees more than ``NLL_CHUNK`` positions at once: Gemma's 262k vocabulary stays out of memory."""
    import torch.nn.functional as F

    from shelley.models import head as heads

    model = tiny_causal_lm("llama" if kind == "lora" else kind, 300, seed=3, max_positions=128)
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.eval()
    ids = torch.randint(0, 300, (3, 100))
    with torch.inference_mode():
        want = F.cross_entropy(
            model(input_ids=ids).logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none"
        )
        monkeypatch.setattr(heads, "NLL_CHUNK", 64)
        rows = []
        head = model.get_output_embeddings()
        hook = head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
        got = heads.next_token_nll(model, ids)
        hook.remove()
    assert got.shape == (3, 99) and torch.allclose(got, want, atol=1e-5)
    assert rows and max(rows) <= 64 and sum(rows) == 3 * 99  # sliced: never the (3 x 100 x vocab) logits
    assert model.get_output_embeddings() is head  # the head is back
