"""An author's several books as one corpus: a folder, a manifest, or ebooks fetched into one folder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import write
from shelley.config import DataConfig
from shelley.data.books import identify
from shelley.data.build import prepare_splits
from shelley.eval.heldout import BANDS

WORDS = [
    "the",
    "night",
    "storm",
    "lake",
    "father",
    "letter",
    "cold",
    "grey",
    "water",
    "wind",
    "mountain",
    "silent",
    "lamp",
    "fear",
    "hope",
]


def _book(title: str, author: str, chapters: int, seed: int) -> str:
    """A Gutenberg-style book with a header and ``chapters`` chapters of a few paragraphs each."""
    rng = random.Random(seed)
    body = []
    for c in range(1, chapters + 1):
        body.append(f"Chapter {c}")
        for _ in range(4):
            body.append(" ".join(rng.choice(WORDS) for _ in range(30)).capitalize() + ".")
    return (
        f"The Project Gutenberg eBook of {title}\n\nTitle: {title}\nAuthor: {author}\n\n"
        f"*** START OF THE PROJECT GUTENBERG EBOOK {title.upper()} ***\n\n" + "\n\n".join(body) + "\n\n"
        f"*** END OF THE PROJECT GUTENBERG EBOOK {title.upper()} ***\n"
    )


@pytest.fixture
def works(tmp_path) -> Path:
    folder = tmp_path / "ann"
    write(folder / "one.txt", _book("The First Romance", "Ann Author", 12, 1))
    write(folder / "two.txt", _book("The Second Romance", "Ann Author", 6, 2))
    return folder


def test_a_folder_is_split_book_by_book(works):
    splits, report = prepare_splits(works, DataConfig())
    assert report["format"] == "books" and report["author"] == "Ann Author"
    assert [b["title"] for b in report["books"]] == ["The First Romance", "The Second Romance"]
    first, second = report["books"]
    assert first["words"] > second["words"] > 0 and abs(first["share"] + second["share"] - 1) < 1e-3
    held = report["split"]["held_out_groups"]["validation"]
    assert any(g.startswith("The First Romance · Chapter") for g in held)
    assert any(g.startswith("The Second Romance · Chapter") for g in held)  # every book gives chapters
    # A book's split does not depend on the other books: the same held-out text as the book alone.
    alone, _ = prepare_splits(works / "two.txt", DataConfig())
    mine = [s.text for s in splits["validation"] if s.section.startswith("The Second Romance")]
    assert mine == [s.text for s in alone["validation"]] and mine
    rows = [s.row for part in splits.values() for s in part]
    assert len(rows) == len(set(rows))  # rows stay traceable across books


def test_a_manifest_names_the_author_and_titles(cli, works, tmp_path):
    manifest = write(
        works / "corpus.yaml",
        "author: Ann Author\ntitle: The Romances\nbooks:\n  - file: two.txt\n    title: Second\n  - file: one.txt\n",
    )
    who = identify(manifest)
    assert (who.author, who.title, who.found_by) == ("Ann Author", "The Romances", "corpus manifest")
    out = tmp_path / "ds"
    result = cli("data", "build", works, "--out", out)  # the folder's corpus.yaml is its manifest
    assert result.exit_code == 0, result.stderr
    build = json.loads((out / "build.json").read_text())
    assert [b["title"] for b in build["books"]] == ["Second", "The First Romance"]
    card = (out / "README.md").read_text()
    assert "| Second |" in card and "| The First Romance |" in card and "% |" in card  # words and share per book


def test_a_book_by_another_author_is_refused_unless_the_manifest_allows_it(cli, works, tmp_path):
    write(works / "other.txt", _book("A Gothic Tale", "Bert Other", 6, 3))
    result = cli("data", "build", works, "--out", tmp_path / "ds")
    assert result.exit_code == 2 and "other.txt is by Bert Other" in result.stderr and "mixed_authors" in result.stderr
    assert not (tmp_path / "ds").exists()
    write(works / "corpus.yaml", "mixed_authors: true\nbooks:\n  - file: one.txt\n  - file: other.txt\n")
    result = cli("data", "build", works, "--out", tmp_path / "ds")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(
    ("manifest", "error"),
    [
        ("books:\n  - file: missing.txt\n", "lists missing.txt, which is missing"),
        ("books: [", "is not valid YAML"),
        ("books: []\n", "must list its books"),
        ("authors: x\nbooks:\n  - file: one.txt\n", "unknown key(s) authors"),
        ("books:\n  - file: one.txt\n  - file: ./one.txt\n", "the same book file twice"),
    ],
)
def test_a_bad_manifest_is_one_line(cli, works, tmp_path, manifest, error):
    write(works / "corpus.yaml", manifest)
    result = cli("data", "build", works / "corpus.yaml", "--out", tmp_path / "ds")
    assert result.exit_code == 2 and error in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "ds").exists()


def test_an_empty_folder_is_one_line(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("data", "build", tmp_path / "empty", "--out", tmp_path / "ds")
    assert result.exit_code == 2 and "is a folder with no book files" in result.stderr


def test_attribution_drops_every_book_by_the_corpus_author(cli, tmp_path):
    """The reference set's own book by the corpus's author leaves the impostors (else it would be told apart from
    the author as another 'author')."""
    from test_attribution import VOCAB_A, VOCAB_B, _author_text, _synthetic_reference

    folder = tmp_path / "a_books"
    for i in range(2):
        lines = [_author_text(VOCAB_A, 60, 100 * i + s, ",") + "." for s in range(60)]
        write(folder / f"a__book_{i}.txt", "\n\n".join(lines))
    ref = _synthetic_reference(tmp_path / "ref", {"a": VOCAB_A, "b": VOCAB_B, "c": VOCAB_B[::-1] + VOCAB_A[:3]})
    mine = write(tmp_path / "mine.txt", _author_text(VOCAB_A, 1200, 77, ","))
    result = cli("style", "attribute", mine, "--corpus", folder, "--reference", ref, "--bag-words", "200",
                 "--set", "data.split=block", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [c["key"] for c in doc["candidates"]] == ["a", "b", "c"] and doc["dropped"] == ["a, Book of a"]
    assert doc["texts"][0]["target_share"] > 0.5


def test_fetch_several_ebooks_into_one_folder(cli, tmp_path, monkeypatch):
    from http.server import BaseHTTPRequestHandler

    from test_fetch import _serve, send_body

    books = {11: _book("The First Romance", "Ann Author", 6, 1), 12: _book("The Second Romance", "Ann Author", 6, 2)}

    class Mirror(BaseHTTPRequestHandler):
        def do_GET(self):
            body = books.get(int(self.path.strip("/").removesuffix(".txt")), "").encode()
            if not body:
                self.send_error(404)
                return
            send_body(self, body)

        def log_message(self, *args):
            pass

    server = _serve(Mirror, monkeypatch)
    try:
        out = tmp_path / "ann"
        result = cli("data", "fetch", "gutenberg", "11", "12", "--out", out)
        assert result.exit_code == 0, result.stderr
        manifest = json.loads((out / "MANIFEST.json").read_text())
        assert [(m["file"], m["author"], m["title"]) for m in manifest] == [
            ("pg11.txt", "Ann Author", "The First Romance"),
            ("pg12.txt", "Ann Author", "The Second Romance"),
        ]
        _, report = prepare_splits(out, DataConfig())
        assert [b["title"] for b in report["books"]] == ["The First Romance", "The Second Romance"]
        bad = cli("data", "fetch", "gutenberg", "11", "13", "--out", tmp_path / "bad")
        assert bad.exit_code == 2 and "answered 404" in bad.stderr and not (tmp_path / "bad").exists()
    finally:
        server.shutdown()


def test_eval_scores_the_authors_unseen_book_by_context_position(cli, tmp_path, tiny_run):
    """``--heldout-book``: base and fine-tuned on the same tokens of a book the run never saw, in bands of context;
    a book the run trained on is refused."""
    import shutil

    from conftest import BOOK_BODY

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    unseen = write(tmp_path / "unseen.txt", _book("The Second Romance", "Ann Author", 8, 5))
    result = cli("eval", run, "--heldout-book", unseen)
    assert result.exit_code == 0, result.stderr
    (book,) = json.loads((run / "eval.json").read_text())["heldout_books"]
    assert book["title"] == "The Second Romance" and book["windows"] >= 2
    base, tuned = book["bands"]["base"], book["bands"]["finetuned"]
    bands = [f"{lo}-{hi}" for lo, hi in BANDS if lo < book["window"]]  # the tiny model's window is short
    assert book["window"] < 1024 and set(base) == set(tuned) == {*bands, "all"} and len(bands) >= 2
    assert all(v > 0 for v in [*base.values(), *tuned.values()]) and base != tuned
    worse = [b for b in bands if tuned[b] >= base[b]]
    assert book["better_everywhere"] == (not worse) and book["worse_bands"] == worse
    md = (run / "eval.md").read_text()
    assert "The author's unseen books" in md and "positions 1-16" in md and "unseen book The Second" in result.stdout
    trained = write(tmp_path / "trained.txt", "\n\n".join(line for line in BOOK_BODY.splitlines() if len(line) > 40))
    refused = cli("eval", run, "--heldout-book", trained)
    assert refused.exit_code == 2 and "is not held out" in refused.stderr
    missing = cli("eval", run, "--heldout-book", tmp_path / "nope.txt")
    assert missing.exit_code == 2 and "no such file" in missing.stderr


def test_several_book_files_on_the_command_line(cli, works, tmp_path, shelley_home):
    """``data build a.txt b.txt``: the corpus of a manifest that names both, kept in $SHELLEY_HOME/corpora."""
    out = tmp_path / "ds"
    result = cli("data", "build", works / "two.txt", works / "one.txt", "--out", out)
    assert result.exit_code == 0, result.stderr
    build = json.loads((out / "build.json").read_text())
    assert [b["title"] for b in build["books"]] == ["The Second Romance", "The First Romance"]  # the order given
    assert Path(build["source"]).parent == shelley_home / "corpora" and Path(build["source"]).suffix == ".yaml"
    again = cli("data", "build", works / "two.txt", works / "one.txt", "--out", tmp_path / "ds2")
    assert json.loads((tmp_path / "ds2" / "build.json").read_text())["source"] == build["source"]  # same manifest
    missing = cli("data", "build", works / "two.txt", works / "nope.txt", "--out", tmp_path / "ds3")
    assert missing.exit_code == 2 and "nope.txt: no such file" in missing.stderr
    assert again.exit_code == 0 and not (tmp_path / "ds3").exists()


def test_a_run_of_several_books_leaves_its_config_as_loaded(tmp_path, tiny_model_dir, works, shelley_home):
    """The whole job on a tiny model and a folder of two books: the corpus's identity travels in the Corpus and
    the run's own copy of the config; the config the caller loaded is not written into."""
    from shelley.config import load_config
    from shelley.pipeline import run_pipeline
    from shelley.run import Run

    cfg = load_config(
        None,
        [f"model.name={tiny_model_dir}", "model.max_length=32", "train.steps=3", "train.micro_batch_size=4",
         "eval.run_attribution_bags=0", "eval.run_scenes=0", "eval.samples_per_prompt=1",
         "generation.max_new_tokens=8", "eval.stride=16"],
    )  # fmt: skip
    before = cfg.model_dump()
    results = run_pipeline(cfg, works, tmp_path / "run", time_budget_s=300)
    assert cfg.model_dump() == before
    assert results.author == "Ann Author" and [b["title"] for b in results.data["books"]] == [
        "The First Romance",
        "The Second Romance",
    ]
    run = Run.open(tmp_path / "run")
    assert run.config().data.author == "Ann Author" and run.config().eval.prompts  # recorded in the run's copy
    corpus = run.corpus()
    assert corpus.source == str(works) and corpus.author == "Ann Author" and corpus.validation
    assert [b["title"] for b in corpus.books] == ["The First Romance", "The Second Romance"]


def test_only_the_corpus_modules_tell_splits_apart():
    """Which corpus this is, and which of its rows are held out, is decided in ``shelley.corpus``,
    ``shelley.data.corpus`` and ``Run`` only."""
    import re

    src = Path(__file__).resolve().parents[1] / "src" / "shelley"
    allowed = {"corpus.py", "data/corpus.py", "run.py"}
    pattern = re.compile(r"dataset_dict\.json|\[\"split\"\]\s*(==|!=|in\b)|\[\"split\"\] for")
    found = [
        f"{p.relative_to(src)}:{n}"
        for p in sorted(src.rglob("*.py"))
        if str(p.relative_to(src)) not in allowed
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, found
