"""The data commands driven through the real CLI, with every path in a temp dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import GUTENBERG, write


def _one_line_error(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("error: "), err
    assert "\n" not in err, err  # one line
    assert "Traceback" not in result.stdout + result.stderr
    return err


def _only(tmp_path: Path, *names: str) -> None:
    """Nothing but the given inputs exists in tmp_path: no output, no temp leftovers."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


@pytest.fixture
def csv_corpus(tmp_path) -> Path:
    rows = ["text", "Letter 1"] + [
        f'"Row {i}: the wind rose over the water, and I wrote line {i} of my letter."' for i in range(60)
    ]
    rows += ["Chapter 1"] + [
        f'"Chapter row {i}: lightning struck the oak, and number {i} was gone."' for i in range(60)
    ]
    return write(tmp_path / "corpus.csv", "\n".join(rows) + "\n")


# ------------------------------------------------------------------------------------------ happy paths


def test_help_is_instant_and_lists_data_commands(cli):
    result = cli("data", "--help")
    assert result.exit_code == 0
    for cmd in ("inspect", "build", "tokens", "fetch"):
        assert cmd in result.stdout


def test_inspect_writes_report_stats_and_two_histograms(cli, tmp_path, tiny_tokenizer_dir):
    book = write(tmp_path / "pg.txt", GUTENBERG)
    out = tmp_path / "report"
    result = cli("data", "inspect", book, "--out", out, "--tokenizer", tiny_tokenizer_dir)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "length_chars.png",
        "length_tokens.png",
        "report.md",
        "stats.json",
    ]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["format"] == "gutenberg"
    assert stats["noise_rows"]["count"] == 4  # Letter 1, Chapter 1 (twice), "0"
    assert stats["tokens"]["total"] > stats["words"]["total"] / 2
    assert {c["char"] for c in stats["non_ascii"]} >= {"\u2014", "\u201c", "\u201d"}
    report = (out / "report.md").read_text()
    assert "![length in tokens](length_tokens.png)" in report and "Non-ASCII" in report
    assert (out / "length_chars.png").read_bytes()[:4] == b"\x89PNG"


def test_build_then_load_from_disk(cli, tmp_path, csv_corpus):
    from datasets import load_from_disk

    out = tmp_path / "ds"
    result = cli("data", "build", csv_corpus, "--out", out, "--set", "data.block_size=10")
    assert result.exit_code == 0, result.stderr
    ds = load_from_disk(str(out))
    assert set(ds) == {"train", "validation"}
    assert len(ds["train"]) + len(ds["validation"]) == 120  # headings dropped
    assert set(ds["train"].column_names) == {"text", "row", "section"}
    report = json.loads((out / "build.json").read_text())
    assert report["cleaning"][-1]["remaining"] == 120
    assert "leakage check" in result.stdout


def test_build_is_deterministic_given_a_seed(cli, tmp_path, csv_corpus):
    from datasets import load_from_disk

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        assert (
            cli(
                "data",
                "build",
                csv_corpus,
                "--out",
                out,
                "--split",
                "block",
                "--seed",
                seed,
                "--set",
                "data.block_size=5",
            ).exit_code
            == 0
        )
    va, vb, vc = (load_from_disk(str(p))["validation"]["row"] for p in (a, b, c))
    assert list(va) == list(vb)
    assert list(va) != list(vc)


def test_build_with_config_file_and_overwrite(cli, tmp_path, csv_corpus):
    cfg = write(tmp_path / "c.yaml", f"data:\n  source: {csv_corpus}\n  out: {tmp_path / 'ds'}\n  split: random\n")
    assert cli("data", "build", "--config", cfg).exit_code == 0
    assert cli("data", "build", "--config", cfg, "--overwrite", "--set", "data.seed=9").exit_code == 0
    report = json.loads((tmp_path / "ds" / "build.json").read_text())
    assert report["config"]["seed"] == 9 and report["split"]["method"] == "random"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_push_to_hub_dry_run_lists_files_and_never_needs_a_token(cli, tmp_path, csv_corpus, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    result = cli("data", "build", csv_corpus, "--out", tmp_path / "ds", "--push-to-hub", "me/frank", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "would upload" in result.stdout and "dataset_dict.json" in result.stdout and "private" in result.stdout
    assert "hf_xxx" not in result.stdout + result.stderr


def test_push_without_token_is_a_clear_error(cli, tmp_path, csv_corpus, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved login either
    result = cli("data", "build", csv_corpus, "--out", tmp_path / "ds", "--push-to-hub", "me/frank")
    assert "no Hugging Face token" in _one_line_error(result)


def test_tokens_on_a_built_dataset(cli, tmp_path, csv_corpus, tiny_tokenizer_dir):
    cli("data", "build", csv_corpus, "--out", tmp_path / "ds")
    result = cli("data", "tokens", tmp_path / "ds", "--tokenizer", tiny_tokenizer_dir, "--max-length", 16, "--json")
    assert result.exit_code == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["roundtrip"]["failed"] == 0 and r["roundtrip"]["checked"] > 0
    assert r["truncated_share"] > 0  # rows are longer than 16 tokens
    assert set(r["pad_share"]) == {"pad_to_max_length", "pad_to_longest_in_batch", "packing"}
    assert r["left_padding_demo"][1][0] == 0  # the shorter prompt is padded on the left


def test_tokens_human_output_explains_padding(cli, tmp_path, csv_corpus, tiny_tokenizer_dir):
    result = cli("data", "tokens", csv_corpus, "--tokenizer", tiny_tokenizer_dir)
    assert result.exit_code == 0, result.stderr
    assert "pads on the RIGHT" in result.stdout and "pads on the LEFT" in result.stdout
    assert "packing" in result.stdout


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("cmd", ["inspect", "build"])
def test_missing_file(cli, tmp_path, cmd):
    err = _one_line_error(
        cli("data", cmd, tmp_path / "nope.csv", "--out", tmp_path / "out", "--tokenizer", "none")
        if cmd == "inspect"
        else cli("data", cmd, tmp_path / "nope.csv", "--out", tmp_path / "out")
    )
    assert "corpus file not found" in err and "nope.csv" in err
    _only(tmp_path)


def test_directory_instead_of_file(cli, tmp_path):
    (tmp_path / "dir").mkdir()
    err = _one_line_error(cli("data", "build", tmp_path / "dir", "--out", tmp_path / "out"))
    assert "is a folder with no book files" in err  # a folder is a corpus of books: this one has none
    _only(tmp_path, "dir")


def test_empty_file(cli, tmp_path):
    write(tmp_path / "e.csv", "")
    assert "is empty" in _one_line_error(cli("data", "build", tmp_path / "e.csv", "--out", tmp_path / "out"))
    _only(tmp_path, "e.csv")


def test_binary_file(cli, tmp_path):
    write(tmp_path / "b.txt", bytes(range(256)) * 4)
    assert "binary" in _one_line_error(
        cli("data", "inspect", tmp_path / "b.txt", "--out", tmp_path / "out", "--tokenizer", "none")
    )
    _only(tmp_path, "b.txt")


def test_non_utf8_says_which_encoding(cli, tmp_path):
    write(tmp_path / "l.txt", ("Caf\u00e9 na\u00efve r\u00f4le. " * 30).encode("cp1252"))
    err = _one_line_error(cli("data", "build", tmp_path / "l.txt", "--out", tmp_path / "out"))
    assert "not valid utf-8" in err and "--encoding" in err
    _only(tmp_path, "l.txt")


def test_csv_without_text_column(cli, tmp_path):
    write(tmp_path / "c.csv", "id,passage\n1,hello\n")
    err = _one_line_error(cli("data", "build", tmp_path / "c.csv", "--out", tmp_path / "out"))
    assert "no 'text' column" in err and "'id', 'passage'" in err and "--text-column" in err
    _only(tmp_path, "c.csv")


def test_all_rows_empty_after_cleaning(cli, tmp_path):
    write(tmp_path / "c.csv", "text\n\nChapter 1\n   \n12\nLetter 4\n")
    err = _one_line_error(cli("data", "build", tmp_path / "c.csv", "--out", tmp_path / "out"))
    assert "empty or noise after cleaning" in err
    _only(tmp_path, "c.csv")


def test_yaml_syntax_error(cli, tmp_path, csv_corpus):
    write(tmp_path / "c.yaml", "data:\n  seed: [1\n")
    err = _one_line_error(cli("data", "build", csv_corpus, "--out", tmp_path / "out", "--config", tmp_path / "c.yaml"))
    assert "YAML syntax error" in err and "line" in err
    _only(tmp_path, "corpus.csv", "c.yaml")


def test_unknown_config_key(cli, tmp_path, csv_corpus):
    write(tmp_path / "c.yaml", "data:\n  sead: 1\n")
    err = _one_line_error(cli("data", "build", csv_corpus, "--out", tmp_path / "out", "--config", tmp_path / "c.yaml"))
    assert "unknown config key 'data.sead'" in err and "c.yaml" in err
    _only(tmp_path, "corpus.csv", "c.yaml")


@pytest.mark.parametrize("override", ["data.max_words=0", "data.block_size=-3", "model.max_length=0"])
def test_zero_or_negative_sizes(cli, tmp_path, csv_corpus, override):
    err = _one_line_error(cli("data", "build", csv_corpus, "--out", tmp_path / "out", "--set", override))
    assert f"'{override.split('=')[0]}'" in err and "greater than 0" in err
    _only(tmp_path, "corpus.csv")


def test_zero_max_length_flag(cli, tmp_path, csv_corpus):
    err = _one_line_error(cli("data", "tokens", csv_corpus, "--max-length", 0))
    assert "--max-length" in err and "greater than 0" in err


def test_output_not_writable(cli, tmp_path, csv_corpus, unwritable_dir):
    out = unwritable_dir / "ds"
    err = _one_line_error(cli("data", "build", csv_corpus, "--out", out))
    assert "not writable" in err and str(out) in err
    assert not out.exists()


def test_output_parent_is_a_file(cli, tmp_path, csv_corpus):
    err = _one_line_error(cli("data", "build", csv_corpus, "--out", csv_corpus / "ds"))
    assert "not a directory" in err
    _only(tmp_path, "corpus.csv")


@pytest.mark.parametrize("cmd", ["inspect", "build"])
def test_existing_output_is_refused_without_overwrite(cli, tmp_path, csv_corpus, cmd):
    out = tmp_path / "out"
    out.mkdir()
    write(out / "keep.txt", "precious")
    extra = ["--tokenizer", "none"] if cmd == "inspect" else []
    err = _one_line_error(cli("data", cmd, csv_corpus, "--out", out, *extra))
    assert "already exists" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "precious"
    _only(tmp_path, "corpus.csv", "out")


def test_no_corpus_given(cli, tmp_path):
    err = _one_line_error(cli("data", "build", "--out", tmp_path / "out"))
    assert "no corpus given" in err


def test_unknown_tokenizer(cli, tmp_path, csv_corpus):
    err = _one_line_error(cli("data", "tokens", csv_corpus, "--tokenizer", "no-such-model"))
    assert "unknown model 'no-such-model'" in err and "smollm2-135m" in err


# --------------------------------------------------------------------------------- the novel itself


def test_novel_inspect_and_build(cli, tmp_path, novel_dir, smol_tokenizer):
    from datasets import load_from_disk

    for name in ("frankenstein.txt", "frankenstein_chunks.csv"):
        out = tmp_path / f"inspect-{name}"
        result = cli("data", "inspect", novel_dir / name, "--out", out)
        assert result.exit_code == 0, result.stderr
        assert {"report.md", "stats.json", "length_chars.png", "length_tokens.png"} <= {p.name for p in out.iterdir()}
        stats = json.loads((out / "stats.json").read_text())
        assert stats["sections"]["count"] == 28  # 4 letters + 24 chapters, "Chapter 1"+"0" read as 10
        assert stats["noise_rows"]["count"] >= 28
        assert 60_000 < stats["tokens"]["total"] < 150_000

        ds_dir = tmp_path / f"ds-{name}"
        result = cli("data", "build", novel_dir / name, "--out", ds_dir)
        assert result.exit_code == 0, result.stderr
        ds = load_from_disk(str(ds_dir))
        assert len(ds["validation"]) > 100 and len(ds["train"]) > 1000
        assert not any(t.startswith("Chapter") and len(t) < 12 for t in ds["train"]["text"])
