"""The output head of a causal LM: whether its logits are a plain linear map of the last hidden state, and
the next-token loss of every position computed from the hidden states a slice of tokens at a time.

Scoring a (batch x tokens) window through ``model(ids).logits`` materializes (batch x tokens x vocabulary)
floats and a log-softmax of the same size: 2 x 1 GB for Gemma 3's 262k vocabulary at 8 x 128 tokens, 2 x 2 GB
for the context curve's 2 x 1,024. ``next_token_nll`` runs the model with its head swapped for an identity and
applies the head to ``NLL_CHUNK`` positions at a time, so scoring needs a few hundred MB at most.
"""

from __future__ import annotations

from contextlib import contextmanager

# Architectures whose logits are exactly ``lm_head(final hidden state)``: no soft-capping, no logit scale, no
# extra head. Others fall back to the model's own loss.
FUSABLE_MODEL_TYPES = frozenset({"llama", "mistral", "gpt2", "qwen2", "qwen3", "gemma3_text"})

NLL_CHUNK = 256  # positions per head slice: (256 x 262,144) fp32 logits are 268 MB


def can_fuse(model) -> bool:
    """Whether ``model``'s logits are a plain linear head over its last hidden state (see FUSABLE_MODEL_TYPES)."""
    import torch

    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in FUSABLE_MODEL_TYPES:
        return False
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    head = model.get_output_embeddings()
    return isinstance(head, torch.nn.Linear)


@contextmanager
def hidden_states_as_logits(model):
    """Swap the output head for an identity while the model runs, so its "logits" are the final hidden states.
    The model is still called through its (possibly DDP-wrapped) forward, so gradient sync works as usual."""
    import torch

    head = model.get_output_embeddings()
    model.set_output_embeddings(torch.nn.Identity())
    try:
        yield head
    finally:
        model.set_output_embeddings(head)


def next_token_nll(model, ids):
    """(B, T-1) loss (nats) of token t+1 given tokens 0..t of ``ids`` (B, T), in fp32, as
    ``cross_entropy(model(ids).logits[:, :-1], ids[:, 1:])`` would give it; for a model whose head is fusable
    (``can_fuse``), without the full logits."""
    import torch
    import torch.nn.functional as F

    if not can_fuse(model):
        logits = model(input_ids=ids).logits.float()
        return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    with hidden_states_as_logits(model) as head:
        hidden = model(input_ids=ids).logits  # (B, T, C): the head was an identity
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = ids[:, 1:].reshape(-1)
    out = torch.empty(targets.shape[0], dtype=torch.float32, device=ids.device)
    for start in range(0, targets.shape[0], NLL_CHUNK):
        logits = head(hidden[start : start + NLL_CHUNK]).float()
        out[start : start + NLL_CHUNK] = F.cross_entropy(logits, targets[start : start + NLL_CHUNK], reduction="none")
    return out.view(ids.shape[0], ids.shape[1] - 1)
