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
    **dict.fromkeys(["records", "run", "corpus"], 0),  # run imports records: foundation modules may use each other
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
    "config._attn_implementation",
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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(["shelley", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def test_no_import_cycle_inside_a_package():
    """Modules of one package (``data``, ``eval``...) import each other one way too, lazy imports included: a
    cycle hidden in a function-level import (books -> build -> card -> books) fails only on the path that runs it."""
    graph: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        here = _module_name(path)
        graph.setdefault(here, set())
        for _, module in _imports(path):
            if module.startswith("shelley.") and module.split(".")[1] == here.split(".")[1] and module != here:
                graph[here].add(module)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


CHEAP = {"shelley.io", "shelley.config", "shelley.run", "shelley.runtime", "shelley.errors"}


def test_cheap_in_house_modules_are_imported_at_the_top():
    """A function-level import is for what costs time to import (torch, transformers) or would be a cycle; the
    in-house foundation modules cost nothing, so importing them lazily only hides what a module depends on."""
    lazy = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module in CHEAP:
                    lazy.append(f"{path.relative_to(SRC)}:{node.lineno} {node.module}")
    assert not lazy, "\n".join(lazy)
