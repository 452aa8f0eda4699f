"""The packages import one way: foundation -> data, models, gpt -> finetune, generate -> eval -> hub -> serve ->
pipeline -> options, views -> cli. Every import counts, the lazy ones inside functions too: an upward import is a
cycle that fails only at run time, on one code path."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "shelley"
# Same number: siblings that must not import each other. serve sits above hub: the Space export writes a Space card.
LAYERS = {
    **dict.fromkeys(["__init__", "errors", "config", "io", "runtime", "configs"], 0),
    **dict.fromkeys(["records", "run"], 0),  # run imports records: foundation modules may use each other
    **dict.fromkeys(["data", "models", "gpt"], 1),
    **dict.fromkeys(["finetune", "generate"], 2),
    "eval": 3,
    **dict.fromkeys(["hub", "export"], 4),  # delivery: the Hub, and the files local runtimes load
    "serve": 5,
    "pipeline": 6,
    **dict.fromkeys(["options", "views"], 7),  # what the commands share, and how their results print
    "cli": 8,
    "__main__": 9,
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)


def test_every_module_is_placed_in_a_layer():
    tops = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in SRC.rglob("*.py")}
    assert tops <= set(LAYERS), tops - set(LAYERS)


def test_no_upward_or_sideways_import():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        here = path.relative_to(SRC).parts[0].removesuffix(".py")
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] != "shelley" or len(parts) < 2 or parts[1] == here:
                continue
            there = parts[1]
            if LAYERS[there] > LAYERS[here] or (LAYERS[there] == LAYERS[here] and LAYERS[here] > 0):
                bad.append(f"{path.relative_to(SRC)}:{line} ({here}) imports {module} ({there})")
    assert not bad, "\n".join(bad)


def test_no_function_over_80_lines():
    """A function a reader can hold in view: the training loop is stages (setup, fit, validate, finish), not one
    320-line body."""
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


# Private attributes of the libraries shelley builds on: each broke, or could break, on a minor release.
PRIVATE = [
    "AcceleratorState._shared_state",
    "_reset_state",
    "_original_forward",
    "_hf_hook",
    "torch.cpu._",
    "torch._C",
    "_find_gguf(",
]


def test_no_private_attribute_of_a_dependency():
    """PEFT's ``_register_custom_module`` is the one private-looking name left: PEFT documents it for custom
    LoRA layers (developer guide, "custom models")."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for name in PRIVATE:
            for line_no, line in enumerate(text.splitlines(), 1):
                if name in line and not (name == "_find_gguf(" and path.name == "registry.py"):
                    found.append(f"{path.relative_to(SRC)}:{line_no}: {name}")
    assert not found, "\n".join(found)
