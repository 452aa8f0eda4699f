"""Text generation shared by training samples, evaluation and the CLI."""

from __future__ import annotations

from shelley.config import GenerationConfig


def generate_texts(
    model, tokenizer, prompts: list[str], gen: GenerationConfig, *, seed: int | None = None
) -> list[str]:
    """Continue every prompt ``gen.num_samples`` times in one left-padded batch; returns the continuations only."""
    import torch

    torch.manual_seed(gen.seed if seed is None else seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # prompts must end where generation starts
    batch_prompts = [p for p in prompts for _ in range(gen.num_samples)]
    enc = tokenizer(batch_prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    kwargs = {
        "max_new_tokens": gen.max_new_tokens,
        "do_sample": gen.do_sample,
        "repetition_penalty": gen.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if gen.do_sample:
        kwargs |= {"temperature": gen.temperature, "top_k": gen.top_k or None, "top_p": gen.top_p}
    if gen.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = gen.no_repeat_ngram_size
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = model.generate(**enc, **kwargs)
    model.train(was_training)
    new = out[:, enc["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new, skip_special_tokens=True)
