"""Prompt sets for ``shelley eval --prompts``: built-in prose / math / code sets, or a file of your own.

A prompt may carry an ``expect`` string (math answers, a function name in code): the report then counts how
many generations contain it, base vs trained, next to the usual perplexity and side-by-side samples.

File formats: ``.txt`` (one prompt per line, ``\\n`` written as the two characters backslash-n) or ``.jsonl``
(``{"prompt": ..., "expect": ...}`` per line, ``expect`` optional).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shelley.data.sources import ASSISTANT, USER
from shelley.errors import ShelleyError
from shelley.records import Generation


@dataclass(frozen=True)
class Prompt:
    prompt: str
    expect: str | None = None


def _ask(q: str) -> str:
    return f"{USER}\n{q}\n{ASSISTANT}\n"


BUILTIN: dict[str, list[Prompt]] = {
    # `prose`: the corpus's own prompts (eval.prompts, a known book's, or openings of validation paragraphs).
    "prose": [],
    # The answers are plain numbers, so "contains the expected string" is a fair check for any model.
    "math": [
        Prompt(_ask("What is 23 + 45?"), "68"),
        Prompt(_ask("What is 91 - 37?"), "54"),
        Prompt(_ask("What is 7 times 8?"), "56"),
        Prompt(_ask("What is 12 + 19?"), "31"),
        Prompt(
            _ask("A shelf holds 14 books. 9 more are added, then 5 are taken away. How many are left?"),
            "18",
        ),
    ],
    "code": [
        Prompt(_ask("Write a Python function that returns the square of a number."), "def "),
        Prompt(_ask("Write a Python function that reverses a string."), "def "),
        Prompt(_ask("How do I read a file line by line in Python?"), "open("),
        Prompt("def fibonacci(n):\n    ", "return"),
        Prompt("import json\n\ndef load(path):\n    ", "json"),
    ],
}


def load_prompts(ref: str) -> tuple[str, list[Prompt]]:
    """(name, prompts) for a built-in set name or a .txt / .jsonl file path; ``prose`` has no prompts of its
    own (an empty list): the run's corpus prompts are used."""
    if ref in BUILTIN:
        return ref, BUILTIN[ref]
    path = Path(ref)
    if not path.exists():
        raise ShelleyError(f"--prompts {ref!r} is neither a built-in set ({', '.join(BUILTIN)}) nor an existing file")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, IsADirectoryError):
        raise ShelleyError(f"--prompts {path} is not a UTF-8 text file; pass a .txt or .jsonl file") from None
    prompts: list[Prompt] = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompts.append(Prompt(str(row["prompt"]), None if row.get("expect") is None else str(row["expect"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ShelleyError(
                    f'--prompts {path} line {n} is not {{"prompt": ..., "expect": ...}} JSON; fix that line'
                ) from None
    else:
        prompts = [Prompt(line.replace("\\n", "\n")) for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ShelleyError(f"--prompts {path} has no prompts; write one per line")
    return path.name, prompts


def score_expectations(generations: list[Generation], prompts: list[Prompt]) -> dict:
    """Mark each generation group with its expected string and count hits per model (in place, and returned)."""
    hits = {"base": 0, "finetuned": 0}
    total = 0
    for g, p in zip(generations, prompts, strict=True):
        if p.expect is None:
            continue
        g.expect = p.expect
        for who in hits:
            n = sum(p.expect in t for t in getattr(g, who))
            setattr(g, f"{who}_hits", n)  # (an extra field of the record)
            hits[who] += n
        total += len(g.finetuned)
    return {"checked_samples": total, "hits": hits} if total else {}
