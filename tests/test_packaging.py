"""shelley as users get it from a wheel (Colab, the exported Space): the presets travel as package data."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from conftest import REPO


def test_installed_wheel_resolves_the_default_preset(tmp_path):
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheel_dir, REPO],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheel_dir.glob("shelley-*.whl")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    # The wheel's copy shadows the editable checkout; run from a folder with no configs/ beside it.
    env = os.environ | {"PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = (
        "import shelley, shelley.cli as c; from shelley.config import resolve_config; print(shelley.__file__); "
        "print(resolve_config(c.DEFAULT_RUN_PRESET)); "
        "from shelley.config import presets; print(len(presets())); "
        # notebook 10 (Colab) loads the QLoRA preset by name from the installed wheel
        "from shelley.config import load_config; q = load_config('mistral-7b_qlora_gpu'); "
        "print(q.train.method, q.model.name)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    module, preset, count, method, model = out.stdout.split()
    assert (method, model) == ("qlora", "mistral-7b")
    assert module.startswith(str(site)) and preset.startswith(str(site))
    assert preset.endswith("smollm2-135m_full_cpu.yaml") and int(count) >= 8
    shown = subprocess.run(
        [sys.executable, "-m", "shelley", "config", "show"], cwd=work, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    cfg = yaml.safe_load(shown.stdout)
    assert cfg["train"]["method"] == "full" and cfg["model"]["max_length"] == 128  # the full CPU preset
    assert "smollm2-135m_full_cpu" in shown.stderr


def test_colab_notebooks_need_no_repository_checkout():
    """Colab has the wheel, not the repository: notebooks 10 and 11 name presets, never repo paths."""
    import nbformat

    for name in ("10_qlora_mistral7b_colab", "11_evaluate_generate_gpu"):
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "configs/" not in code and "../" not in code and "bench" not in code
        assert "shelley-*.whl" in code or name != "10_qlora_mistral7b_colab"
