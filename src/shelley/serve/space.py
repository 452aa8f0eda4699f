"""``shelley serve RUN_DIR --export-space DIR``: the demo as a Hugging Face Space folder.

The Space loads the model from its Hub repo (``shelley push`` it first), keeps the originality guard by
shipping the run's index, and installs shelley itself from a wheel built into the folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from shelley.config import GenerationConfig
from shelley.errors import ShelleyError
from shelley.io import atomic_dir
from shelley.run import Run

APP = '''"""Gradio Space for a shelley model; written by `shelley serve --export-space`."""

import json
import os
from pathlib import Path

from shelley.config import GenerationConfig
from shelley.eval.originality import CorpusIndex
from shelley.generate.batch import batch_writer
from shelley.generate.load import load_for_generation
from shelley.serve.app import Demo, serve

HERE = Path(__file__).parent
MODEL = os.environ.get("SHELLEY_MODEL", {model_repo!r})
settings = json.loads((HERE / "demo.json").read_text())
loaded = load_for_generation(MODEL)
index_file = HERE / "originality-index.npz"
demo = Demo(
    loaded.model,
    loaded.tokenizer,
    GenerationConfig(**settings["generation"]),
    index=CorpusIndex.load(index_file) if index_file.exists() else None,
    max_span=settings["max_span"],
    facts=settings["facts"],
    engine=batch_writer(loaded.model, loaded.tokenizer),  # readers who arrive together share a batch
)
# serve(): a Gradio worker per reader the batcher can queue, and a warmed request path; the host and port are
# the Space's own (Spaces set GRADIO_SERVER_NAME), else this machine's loopback
serve(
    demo,
    host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
    port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    title=settings["title"],
)
'''


def project_root() -> Path | None:
    """The source checkout shelley runs from (editable install), where a wheel can be built."""
    import shelley

    root = Path(shelley.__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() else None


def export_space(
    run: Run, out: Path, *, model_repo: str | None, gen: GenerationConfig, max_span: int, overwrite: bool = False
) -> list[Path]:
    """A Hugging Face Space folder (app, card, settings, originality index, shelley wheel) for the pushed model
    ``model_repo``."""
    from shelley.hub.card import render_space_card
    from shelley.hub.push import check_repo_id
    from shelley.serve.app import run_facts, run_results

    if not model_repo:
        raise ShelleyError("--export-space needs --model-repo OWNER/NAME (push the model there first)")
    check_repo_id(model_repo)
    card = render_space_card(run, model_repo=model_repo)
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        (tmp / "app.py").write_text(APP.format(model_repo=model_repo), encoding="utf-8")
        settings = {
            "title": f"{model_repo.split('/')[-1]} demo",
            "generation": gen.model_dump(mode="json"),
            "max_span": max_span,
            "facts": run_facts(run_results(run)),
        }
        (tmp / "demo.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
        (tmp / "README.md").write_text(card, encoding="utf-8")
        index = run.originality_index
        if index.exists():
            shutil.copy2(index, tmp / index.name)
        requirements = ["gradio>=5"]
        root = project_root()
        if root is not None:
            wheel = _build_wheel(root, tmp)
            requirements.insert(0, f"./{wheel.name}")
        else:
            requirements.insert(0, "shelley  # install shelley as you did here")
        (tmp / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    return sorted(Path(out).iterdir())


def _build_wheel(root: Path, dest: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(root)],
        capture_output=True,
        text=True,
    )
    wheels = sorted(dest.glob("shelley-*.whl"))
    if proc.returncode or not wheels:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ShelleyError(f"could not build the shelley wheel for the Space ({last[0][:160]}); pip install wheel")
    return wheels[0]
