from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, write
from shelley.config import ShelleyConfig, apply_overrides, describe_fields, load_config
from shelley.errors import ShelleyError

PRESETS = sorted((REPO / "src" / "shelley" / "configs").glob("*.yaml"))


def test_defaults_load_without_a_file():
    cfg = load_config()
    assert cfg.data.split == "section" and cfg.model.name == "smollm2-135m"
    assert cfg.model.trust_remote_code is False


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads_and_opens_with_its_command(preset: Path):
    cfg = load_config(preset)
    assert isinstance(cfg, ShelleyConfig)
    first = preset.read_text().splitlines()[0]
    assert first.startswith("# shelley ") and preset.stem in first
    # torchtune naming: <model-or-corpus>_<method>_<device>.yaml
    assert len(preset.stem.split("_")) == 3


def test_presets_exist():
    assert len(PRESETS) >= 2


def test_presets_resolve_by_name_from_anywhere(tmp_path, monkeypatch):
    from shelley.config import DEFAULT_RUN_PRESET, presets, resolve_config

    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the packaged presets must still be found
    assert set(presets()) == {p.stem for p in PRESETS}
    for ref in ("smollm2-135m_lora_cpu", "smollm2-135m_lora_cpu.yaml", "configs/smollm2-135m_lora_cpu.yaml"):
        assert load_config(ref).train.method == "lora"
    assert resolve_config(DEFAULT_RUN_PRESET).name == "smollm2-135m_full_cpu.yaml"
    with pytest.raises(ShelleyError, match="pass a YAML file or a preset name"):
        load_config("no-such-preset")


def test_every_field_is_documented():
    rows = describe_fields()
    assert len(rows) > 40
    assert all(desc for _, _, desc in rows), [k for k, _, d in rows if not d]


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path / "c.yaml", "data:\n  seperator: x\n")
    with pytest.raises(ShelleyError, match=rf"unknown config key 'data.seperator' in {p}"):
        load_config(p)


def test_unknown_section(tmp_path):
    p = write(tmp_path / "c.yaml", "dataa:\n  seed: 1\n")
    with pytest.raises(ShelleyError, match="unknown config key 'dataa'"):
        load_config(p)


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path / "c.yaml", "train:\n  steps: lots\n")
    with pytest.raises(ShelleyError, match=rf"invalid value for 'train.steps' in {p}"):
        load_config(p)


@pytest.mark.parametrize(
    "override",
    [
        "train.steps=0",
        "data.max_words=-5",
        "train.micro_batch_size=0",
        "data.validation_fraction=0",
        "model.max_length=-1",
    ],
)
def test_zero_or_negative_sizes_rejected(override):
    with pytest.raises(ShelleyError, match="invalid value for"):
        load_config(overrides=[override])


def test_yaml_syntax_error_gives_line(tmp_path):
    p = write(tmp_path / "c.yaml", "data:\n  seed: 1\n  split: [section\n")
    with pytest.raises(ShelleyError, match=r"YAML syntax error in .*c.yaml at line \d+") as info:
        load_config(p)
    assert "\n" not in str(info.value)


def test_yaml_must_be_a_mapping(tmp_path):
    p = write(tmp_path / "c.yaml", "- a\n- b\n")
    with pytest.raises(ShelleyError, match="must be a mapping"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ShelleyError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_are_typed_and_win_over_the_file(tmp_path):
    p = write(tmp_path / "c.yaml", "data:\n  seed: 1\n")
    cfg = load_config(p, ["data.seed=7", "train.learning_rate=3e-4", "data.dedup_near=false", "eval.prompts=[a, b]"])
    assert cfg.data.seed == 7 and cfg.train.learning_rate == pytest.approx(3e-4)
    assert cfg.data.dedup_near is False and cfg.eval.prompts == ["a", "b"]


def test_bad_override_syntax():
    with pytest.raises(ShelleyError, match=r"--set section\.key=value"):
        load_config(overrides=["data.seed"])
    with pytest.raises(ShelleyError, match=r"unknown config key .data\.nope."):
        load_config(overrides=["data.nope=1"])


def test_apply_overrides_does_not_mutate_input():
    data = {"data": {"seed": 1}}
    out = apply_overrides(data, ["data.seed=2"])
    assert data == {"data": {"seed": 1}} and out == {"data": {"seed": 2}}


def test_a_window_reshapes_the_batch_to_the_same_tokens_a_step():
    from shelley.config import with_window

    cfg = load_config("smollm2-135m_full_cpu")
    wide = with_window(cfg, 512)
    assert (wide.model.max_length, wide.train.micro_batch_size, wide.eval.stride) == (512, 2, 512)
    assert wide.model.max_length * wide.train.micro_batch_size == cfg.model.max_length * cfg.train.micro_batch_size
    assert with_window(cfg, 4096).train.micro_batch_size == 1  # at least one window
    assert cfg.model.max_length == 128  # the loaded config is left as it was


def test_a_window_too_small_is_one_line(cli, tmp_path):
    res = cli("run", tmp_path / "none.csv", "--window", "8")
    assert res.exit_code == 2 and "--window must be at least 16 tokens (got 8); e.g. --window 512" in res.stderr


def test_resume_may_change_how_long_and_how_often_never_what_is_computed():
    from shelley.config import resumable_keys

    keys = resumable_keys()
    assert {"train.steps", "train.time_budget_s", "train.eval_every", "train.keep_best", "train.max_epochs"} <= keys
    computed = {"train.learning_rate", "train.seed", "train.micro_batch_size", "model.name", "model.max_length"}
    assert not keys & (computed | {"data.seed", "train.method"})
