from __future__ import annotations

from shelley.config import DataConfig
from shelley.data.build import prepare_splits
from shelley.data.ingest import Snippet
from shelley.data.split import ngram_overlap, ngrams, split_snippets


def _book(chapters: int = 10, per: int = 10) -> list[Snippet]:
    out = []
    for c in range(chapters):
        for k in range(per):
            out.append(
                Snippet(
                    text=f"chapter {c} paragraph {k} words words words",
                    row=len(out),
                    section=f"Chapter {c + 1}",
                )
            )
    return out


def test_section_split_holds_out_whole_chapters():
    snippets = _book()
    result = split_snippets(snippets, method="section", validation_fraction=0.2, seed=1)
    assert result.method == "section"
    val_sections = {s.section for s, lab in zip(snippets, result.labels, strict=False) if lab == "validation"}
    train_sections = {s.section for s, lab in zip(snippets, result.labels, strict=False) if lab == "train"}
    assert val_sections and not (val_sections & train_sections)  # no chapter on both sides
    assert result.labels.count("validation") == 20
    assert sorted(result.groups["validation"]) == sorted(val_sections)


def test_split_is_deterministic_per_seed_and_changes_with_seed():
    snippets = _book(chapters=20)
    a = split_snippets(snippets, seed=7).labels
    b = split_snippets(snippets, seed=7).labels
    c = split_snippets(snippets, seed=8).labels
    assert a == b
    assert a != c


def test_without_headings_falls_back_to_contiguous_blocks():
    snippets = [Snippet(text=f"row {i} text here", row=i) for i in range(100)]
    result = split_snippets(snippets, method="section", validation_fraction=0.1, block_size=10, seed=3)
    assert result.method == "block" and "headings" in result.note
    val_rows = [i for i, lab in enumerate(result.labels) if lab == "validation"]
    assert len(val_rows) == 10 and val_rows == list(range(val_rows[0], val_rows[0] + 10))  # contiguous
    assert val_rows[0] % 10 == 0


def test_test_split_is_disjoint():
    snippets = _book(chapters=20)
    labels = split_snippets(snippets, validation_fraction=0.1, test_fraction=0.1).labels
    assert labels.count("validation") == 20 and labels.count("test") == 20 and labels.count("train") == 160


def test_ngram_overlap_counts():
    train = ["the cat sat on the mat today", "a b c d"]
    held = ["yesterday the cat sat on the mat", "nothing shared here at all"]
    ov = ngram_overlap(train, held, n=4)
    # held-out 4-grams: 4 + 2 = 6; shared: "the cat sat on", "cat sat on the", "sat on the mat"
    assert ov["held_out_ngrams"] == 6
    assert ov["shared_ngram_occurrences"] == 3
    assert ov["max_shared_in_one_row"] == 3 and ov["worst_row"]["row"] == 0


def test_novel_split_reports_its_true_leakage(novel_dir):
    """The report's 8-gram overlap equals an independent recount; holding out chapters leaks far less than rows."""
    cfg = DataConfig()
    splits, report = prepare_splits(novel_dir / "frankenstein.txt", cfg)
    train_grams = {g for s in splits["train"] for g in ngrams(s.text, 8)}
    val_grams = [g for s in splits["validation"] for g in ngrams(s.text, 8)]
    shared = sum(g in train_grams for g in val_grams)
    ov = report["overlap"]["validation"]
    assert ov["shared_ngram_occurrences"] == shared
    assert ov["held_out_ngrams"] == len(val_grams)
    assert report["split"]["method"] == "section"
    assert 0.05 < len(splits["validation"]) / (len(splits["train"]) + len(splits["validation"])) < 0.2
    # Sections never straddle the split.
    assert not ({s.section for s in splits["train"]} & {s.section for s in splits["validation"]})
    _, random_report = prepare_splits(novel_dir / "frankenstein.txt", cfg.model_copy(update={"split": "random"}))
    assert random_report["overlap"]["validation"]["shared_fraction"] >= ov["shared_fraction"]
