"""`shelley write` and `shelley style` through the real CLI, on a tiny trained run."""

from __future__ import annotations

import json

import pytest

from conftest import BOOK_BODY, write


def _json(result):
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_write_json_batches_prompts_and_reports_copying(cli, tiny_run):
    doc = _json(cli("write", tiny_run, "The storm", "I was", "--samples", 2, "-n", 6, "--json"))
    samples = doc["samples"]
    assert [(s["prompt"], s["sample"]) for s in samples] == [
        ("The storm", 1),
        ("The storm", 2),
        ("I was", 1),
        ("I was", 2),
    ]
    for s in samples:
        o = s["originality"]
        assert 0 <= o["longest_span"] <= o["words"] and 0.0 <= o["ngram_share"] <= 1.0
    assert (tiny_run / "originality-index.npz").exists()  # built once, cached in the run


def test_write_streams_a_single_sample(cli, tiny_run):
    result = cli("write", tiny_run, "The storm", "-n", 5, "--greedy")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("The storm") and "longest span copied" in result.stdout


def test_write_original_keeps_every_sample_under_the_span_or_says_so(cli, tiny_run):
    result = cli(
        "write",
        tiny_run,
        "The storm",
        "I was",
        "--samples",
        3,
        "-n",
        8,
        "--original",
        "--max-span",
        1,
        "--tries",
        3,
        "--json",
    )
    samples = _json(result)["samples"]
    for s in samples:
        assert s["originality"]["longest_span"] <= 1 or s["gave_up"]
        assert 1 <= s["tries"] <= 3
    gave_up = [s for s in samples if s["gave_up"]]
    assert ("gave up" in result.stderr) == bool(gave_up)
    if any(s["tries"] > 1 for s in samples):
        assert "re-sampling" in result.stderr


def test_empty_prompt_is_unconditional(cli, tiny_run):
    result = cli("write", tiny_run, "", "-n", 4, "--json")
    assert _json(result)["samples"][0]["prompt"] == ""
    assert "unconditionally" in result.stderr


def test_prompt_longer_than_the_context_is_truncated(cli, tiny_run):
    result = cli("write", tiny_run, "the storm broke " * 200, "-n", 4, "--json")
    assert result.exit_code == 0, result.stderr
    assert "kept its last" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
    ],
)
def test_bad_sampling_flags(cli, tiny_run, args, message):
    result = cli("write", tiny_run, "The storm", *args)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_adapter_whose_base_model_is_missing(cli, tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "deleted-base")
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    result = cli("write", adapter, "The storm")
    assert result.exit_code == 2 and "base model of adapter" in result.stderr and "missing" in result.stderr


def test_index_from_another_corpus_is_refused(cli, tmp_path, tiny_run):
    from shelley.eval.originality import CorpusIndex

    other = tmp_path / "other.npz"
    CorpusIndex.build([{"text": "a different book entirely", "split": "train", "row": 0}]).save(other)
    result = cli("write", tiny_run, "The storm", "--index", other)
    assert result.exit_code == 2 and "different corpus" in result.stderr


def test_original_without_a_corpus(cli, tiny_model_dir):
    result = cli("write", tiny_model_dir, "The storm", "--original")
    assert result.exit_code == 2 and "--corpus" in result.stderr


def test_style_of_a_text_against_a_corpus(cli, tmp_path):
    corpus = write(tmp_path / "book.txt", BOOK_BODY * 4)
    same = _json(
        cli(
            "style",
            "profile",
            "The storm broke at midnight; I ran out to see the old oak.",
            "--corpus",
            corpus,
            "--json",
        )
    )
    assert same["groups"]["corpus_held_out"]["delta"] == 0.0
    assert same["groups"]["text"]["delta"] > 0 and same["features"]
    text_file = write(tmp_path / "mine.txt", "Okay so you've got your laptop, right? It's easy, you can do it.")
    table = cli("style", "profile", text_file, "--corpus", corpus)
    assert table.exit_code == 0 and "Delta" in table.stdout


def test_style_of_an_empty_text(cli, tmp_path):
    corpus = write(tmp_path / "book.txt", BOOK_BODY)
    result = cli("style", "profile", "   ", "--corpus", corpus)
    assert result.exit_code == 2 and "empty" in result.stderr


def test_write_a_scene_as_json_and_to_a_file(cli, tiny_run, tmp_path):
    beats = write(tmp_path / "beats.txt", "Then the storm broke.\n\nShe ran to the window.\n")
    out = tmp_path / "scene.txt"
    doc = _json(
        cli("write", tiny_run, "The storm", "--words", 120, "--beats", beats, "--original", "--out", out, "--json")
    )
    scene = doc["scene"]
    assert scene["words"] >= 0.8 * 120 and scene["words_asked"] == 120
    assert scene["beats"] == ["Then the storm broke.", "She ran to the window."]
    assert [scene["paragraphs"][i][:10] for i in scene["beat_paragraphs"]] == ["Then the s", "She ran to"]
    assert scene["guard"]["on"] and (scene["guard"]["longest_span"] <= 12 or scene["guard"]["gave_up"])
    assert 0 < scene["context_tokens"] < 128 and scene["tokens_per_s"] > 0  # the tiny model has 128 positions
    assert out.read_text(encoding="utf-8") == "The storm " + scene["text"] + "\n"


def test_write_a_scene_streams_paragraphs(cli, tiny_run):
    result = cli("write", tiny_run, "The storm", "--words", 100)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("The storm") and "words in" in result.stdout and "tokens/s" in result.stdout


def test_write_a_scene_with_int8_weights(cli, tiny_run):
    """--int8: the transformers engine decodes with int8 weights; the scene is written as with full weights."""
    doc = _json(cli("write", tiny_run, "The storm", "--words", 100, "--int8", "--json"))
    assert doc["scene"]["words"] >= 80 and doc["scene"]["tokens_per_s"] > 0


def test_int8_with_llamacpp_is_refused_before_loading(cli, tiny_run):
    result = cli("write", tiny_run, "The storm", "--engine", "llamacpp", "--int8", "--gguf", "none.gguf")
    assert result.exit_code == 2 and "--int8 is for the transformers engine" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--words", "0"], "--words must be between 100 and 3000"),
        (["--words", "-3"], "--words must be between 100 and 3000"),
        (["--words", "9000"], "--words must be between 100 and 3000"),
        (["--words", "200", "--beats", "no-such-beats.txt"], "beats file not found"),
        (["--words", "200", "--samples", "2"], "--words writes one scene"),
    ],
)
def test_bad_scene_requests_fail_before_loading(cli, tiny_run, tmp_path, args, message):
    out = tmp_path / "scene.txt"
    result = cli("write", tiny_run, "The storm", *args, "--out", out)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_empty_beats_file(cli, tiny_run, tmp_path):
    beats = write(tmp_path / "beats.txt", "\n \n")
    result = cli("write", tiny_run, "The storm", "--words", 200, "--beats", beats)
    assert result.exit_code == 2 and "beats file" in result.stderr and "is empty" in result.stderr


def test_eval_scenes_reports_every_measure_and_the_context_curve(cli, tiny_run, tmp_path):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    result = cli("eval", run, "--scenes", 2, "--words", 100)
    assert result.exit_code == 0, result.stderr
    sc = json.loads((run / "eval.json").read_text())["scenes"]
    assert sc["scenes"] == 2 and sc["words"] == 100
    for who in ("base", "finetuned"):
        assert len(sc["rows"][who]) == 2
        for row in sc["rows"][who]:
            assert {"repeated_4gram_share", "distinct_2", "gzip_ratio", "longest_self_repeat", "loops"} <= set(row)
            assert {"longest_copied", "names_per_1000"} <= set(row) and row["words"] >= 80
        curve = sc["context_curve"][who]
        assert curve["window"] == 128 and len(curve["loss"]) == 127 * (curve["windows"] > 0)
        assert sc["timing"][who]["tokens"] > 0
    assert (
        sc["timing"]["finetuned"]["paragraph_break"] == "eos" and sc["timing"]["base"]["paragraph_break"] == "newline"
    )
    texts = json.loads((run / "scene-texts.json").read_text())["texts"]
    assert [len(texts["base"]), len(texts["finetuned"])] == [2, 2]
    assert "## Whole scenes" in (run / "eval.md").read_text() and "Whole scenes" in (run / "eval.html").read_text()


def test_eval_scenes_with_a_bad_length(cli, tiny_run):
    result = cli("eval", tiny_run, "--scenes", 2, "--words", 50)
    assert result.exit_code == 2 and "--words must be between" in result.stderr
