from __future__ import annotations

import subprocess
import sys


def test_cli_import_stays_light():
    """`shelley --help` is instant because the CLI module imports no heavy library at start-up."""
    code = (
        "import sys, shelley.cli; heavy = [m for m in ('torch', 'transformers', 'datasets', 'matplotlib', 'peft')"
        " if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_help_and_version(cli):
    result = cli("--help")
    assert result.exit_code == 0 and "data" in result.stdout and "models" in result.stdout
    assert cli("--version").stdout.strip().startswith("shelley ")


def test_config_show_applies_file_and_overrides(cli, tmp_path):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  seed: 5\n")
    result = cli("config", "show", "--config", cfg, "--set", "train.steps=12")
    assert result.exit_code == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["data"]["seed"] == 5 and shown["train"]["steps"] == 12


def test_config_keys_lists_documented_keys(cli):
    result = cli("config", "keys")
    assert result.exit_code == 0 and "data.validation_fraction" in result.stdout


def test_models_list(cli):
    result = cli("models", "list")
    assert result.exit_code == 0
    for name in ("smollm2-135m", "distilgpt2", "gpt2", "mistral-7b"):
        assert name in result.stdout


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "shelley", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "data" in out.stdout
