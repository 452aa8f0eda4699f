from __future__ import annotations

import pytest

from shelley.data.tokens import _pad_share, packing_pad_share, token_check


def test_pad_shares_exact():
    lengths = [10, 30, 5, 20]  # 65 real tokens
    assert _pad_share(lengths, 2, 32, "max_length") == pytest.approx(1 - 65 / 128)
    assert _pad_share(lengths, 2, 32, "longest") == pytest.approx(1 - 65 / 100)
    # Packed: 65 tokens + 4 EOS = 69 in ceil(69/32)=3 blocks of 32.
    assert packing_pad_share(lengths, 32) == pytest.approx(1 - 69 / 96)
    # Truncation: a 40-token row counts as 32 real tokens when padded to 32.
    assert _pad_share([40, 8], 2, 32, "max_length") == pytest.approx(1 - 40 / 64)


def test_token_check_on_smollm2_tokenizer_and_novel(smol_tokenizer, novel_dir):
    """The real offline tokenizer on the real corpus: lossless round trip, packing wastes (almost) nothing."""
    from shelley.config import DataConfig
    from shelley.data.build import prepare_splits

    splits, _ = prepare_splits(novel_dir / "frankenstein_chunks.csv", DataConfig())
    texts = [s.text for s in splits["train"]]
    side, pad = smol_tokenizer.padding_side, smol_tokenizer.pad_token
    r = token_check(texts, smol_tokenizer, max_length=96, batch_size=8)
    assert r["roundtrip"]["failed"] == 0 and r["roundtrip"]["checked"] == 200
    assert 40 < r["tokens_per_row"]["mean"] < 90
    assert 0 < r["truncated_share"] < 0.15
    ps = r["pad_share"]
    assert ps["packing"] < 0.01 < ps["pad_to_longest_in_batch"] < ps["pad_to_max_length"]
    assert r["left_padding_demo"][1][0] == 0  # shorter prompt padded on the left
    assert (smol_tokenizer.padding_side, smol_tokenizer.pad_token) == (side, pad)  # a check changes nothing
