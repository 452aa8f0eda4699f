"""Extra training text for scratch models: named Hub datasets (online) and a synthetic arithmetic generator.

A scratch GPT trained only on one novel learns that novel; users who want a small general model mix in chat,
math, code or prose. Every source is formatted into plain text, chat turns marked with the tokenizer's role
tokens (``<|user|>``, ``<|assistant|>``), capped at ``data.source_max_rows`` rows, and split into train and
validation with the corpus's own ``validation_fraction`` and seed.

Offline, a Hub source cannot be fetched: the run says which one and why, and with
``data.synthetic_fallback: true`` trains on generated arithmetic in its place so the run still works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shelley.config import DataConfig
from shelley.errors import ShelleyError

USER, ASSISTANT = "<|user|>", "<|assistant|>"


def chat_turn(user: str, assistant: str) -> str:
    """One exchange in the chat layout the scratch tokenizer reserves role tokens for."""
    return f"{USER}\n{user.strip()}\n{ASSISTANT}\n{assistant.strip()}"


def format_oasst(rows: Iterable[dict[str, Any]]) -> list[str]:
    """OpenAssistant/oasst1 stores messages as trees (message_id / parent_id); each English assistant reply
    becomes one exchange with the prompter message it answers."""
    rows = list(rows)
    by_id = {r["message_id"]: r for r in rows}
    out = []
    for r in rows:
        parent = by_id.get(r.get("parent_id"))
        if r.get("role") == "assistant" and parent and parent.get("role") == "prompter" and r.get("lang") == "en":
            out.append(chat_turn(parent["text"], r["text"]))
    return out


def format_gsm8k(rows: Iterable[dict[str, Any]]) -> list[str]:
    # gsm8k answers end with "#### 42"; keep the worked solution, state the final answer plainly.
    out = []
    for r in rows:
        work, _, final = r["answer"].rpartition("####")
        out.append(chat_turn(r["question"], f"{work.strip()}\nThe answer is {final.strip()}."))
    return out


def format_code_instructions(rows: Iterable[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        ask = r["instruction"] + (f"\n{r['input']}" if r.get("input") else "")
        out.append(chat_turn(ask, r["output"]))
    return out


def format_wikitext(rows: Iterable[dict[str, Any]]) -> list[str]:
    # wikitext has one line per row; headings look like " = Title = " and blank rows separate paragraphs.
    return [t for r in rows if (t := r["text"].strip()) and not t.startswith("=")]


@dataclass(frozen=True)
class HubSource:
    hub_id: str
    config: str | None
    split: str
    format: Callable[[Iterable[dict[str, Any]]], list[str]]
    what: str


HUB_SOURCES = {
    "chat": HubSource("OpenAssistant/oasst1", None, "train", format_oasst, "assistant conversations"),
    "math": HubSource("openai/gsm8k", "main", "train", format_gsm8k, "grade-school math word problems"),
    "code": HubSource(
        "sahil2801/CodeAlpaca-20k", None, "train", format_code_instructions, "code instructions and answers"
    ),
    "prose": HubSource("Salesforce/wikitext", "wikitext-103-raw-v1", "train", format_wikitext, "Wikipedia prose"),
}
SYNTHETIC = "arithmetic"
SOURCE_NAMES = (*HUB_SOURCES, SYNTHETIC)


def synthetic_arithmetic(n: int, seed: int) -> list[str]:
    """``n`` arithmetic exchanges (sums, differences, products, two-step problems), the same for the same seed."""
    rng = np.random.default_rng([seed, 84])
    out = []
    for _ in range(n):
        a, b, c = (int(x) for x in rng.integers(2, 100, size=3))
        kind = int(rng.integers(4))
        if kind == 0:
            out.append(chat_turn(f"What is {a} + {b}?", f"{a} + {b} = {a + b}."))
        elif kind == 1:
            hi, lo = max(a, b), min(a, b)
            out.append(chat_turn(f"What is {hi} - {lo}?", f"{hi} - {lo} = {hi - lo}."))
        elif kind == 2:
            a, b = a % 13 + 2, b % 13 + 2
            out.append(chat_turn(f"What is {a} times {b}?", f"{a} × {b} = {a * b}."))
        else:
            out.append(
                chat_turn(
                    f"A shelf holds {a} books. {b} more are added, then {min(c, a + b)} are taken away. "
                    "How many are left?",
                    f"{a} + {b} = {a + b}; {a + b} - {min(c, a + b)} = {a + b - min(c, a + b)}. "
                    f"The answer is {a + b - min(c, a + b)}.",
                )
            )
    return out


def fetch_hub_source(name: str, max_rows: int) -> list[str]:
    """Download and format one named source (needs internet; the `datasets` cache makes re-runs offline)."""
    from datasets import load_dataset

    src = HUB_SOURCES[name]
    # oasst1 needs whole trees to pair replies with prompts, so cap after formatting; the others read a slice.
    split = src.split if name == "chat" else f"{src.split}[:{max_rows * 3}]"
    ds = load_dataset(src.hub_id, src.config, split=split)
    return src.format(ds)[:max_rows]


def load_sources(
    names: list[str],
    *,
    max_rows: int,
    seed: int,
    fallback: bool,
    on_note: Callable[[str], None] | None = None,
    fetch: Callable[[str, int], list[str]] = fetch_hub_source,
) -> dict[str, list[str]]:
    """Formatted texts per source name; an unreachable Hub source is an error, or arithmetic with ``fallback``."""
    note = on_note or (lambda _m: None)
    unknown = [n for n in names if n not in SOURCE_NAMES]
    if unknown:
        raise ShelleyError(
            f"unknown data source {', '.join(map(repr, unknown))} in data.extra_sources; "
            f"choose from {', '.join(SOURCE_NAMES)}"
        )
    out: dict[str, list[str]] = {}
    for name in names:
        if name == SYNTHETIC:
            out[name] = synthetic_arithmetic(max_rows, seed)
            continue
        try:
            texts = fetch(name, max_rows)
        except Exception as exc:  # offline, gated, renamed upstream: all mean "not available now"
            why = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            src = HUB_SOURCES[name]
            if not fallback:
                raise ShelleyError(
                    f"data source {name!r} ({src.hub_id}) could not be fetched: {why}; go online, drop it from "
                    "data.extra_sources, or set data.synthetic_fallback=true to use synthetic arithmetic instead"
                ) from None
            note(f"data source {name!r} ({src.hub_id}) could not be fetched ({why}); using synthetic arithmetic")
            out[f"{SYNTHETIC} (for {name})"] = synthetic_arithmetic(max_rows, seed + len(out))
            continue
        if not texts:
            raise ShelleyError(f"data source {name!r} ({HUB_SOURCES[name].hub_id}) gave no rows; drop it")
        out[name] = texts
        note(f"data source {name!r}: {len(texts)} rows of {HUB_SOURCES[name].what}")
    return out


def split_source(texts: list[str], validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Random train/validation split of one source (its rows are independent, so random is leakage-safe)."""
    order = np.random.default_rng([seed, len(texts)]).permutation(len(texts))
    n_val = max(1, round(len(texts) * validation_fraction)) if len(texts) > 1 else 0
    val_idx = set(int(i) for i in order[:n_val])
    return (
        [t for i, t in enumerate(texts) if i not in val_idx],
        [t for i, t in enumerate(texts) if i in val_idx],
    )


def with_sources(
    train: list[str], val: list[str], cfg: DataConfig, *, on_note: Callable[[str], None] | None = None, **kw: Any
) -> tuple[list[str], list[str]]:
    """The corpus's train/validation texts with every ``data.extra_sources`` source split and appended."""
    if not cfg.extra_sources:
        return train, val
    sources = load_sources(
        cfg.extra_sources,
        max_rows=cfg.source_max_rows,
        seed=cfg.seed,
        fallback=cfg.synthetic_fallback,
        on_note=on_note,
        **kw,
    )
    train, val = list(train), list(val)
    for texts in sources.values():
        t, v = split_source(texts, cfg.validation_fraction, cfg.seed)
        train += t
        val += v
    return train, val
