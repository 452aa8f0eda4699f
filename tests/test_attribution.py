"""Who wrote this? The attributor on real books, an exact synthetic case, the corpus's identity, the CLI's bad
inputs, `shelley eval --attribution` on a tiny run, and the blind A/B page answered in Chromium."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from conftest import write
from shelley.data.books import corpus_prompts, identify, load_reference
from shelley.errors import ShelleyError
from shelley.eval.attribution import (
    Candidate,
    build_test,
    fisher_greater,
    make_bags,
    tokens,
    verdict,
    wilson,
)
from shelley.eval.voice import split_book


def _reference_dir() -> Path:
    path = Path(os.environ.get("SHELLEY_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    ref = path / "reference"
    if not (ref / "MANIFEST.json").exists():
        if os.environ.get("CI"):
            pytest.fail(f"the reference set is missing at {ref}; CI must set SHELLEY_DATA_DIR")
        pytest.skip(f"reference set not found at {ref}; set SHELLEY_DATA_DIR")
    return ref


def _author_text(vocab: list[str], n_words: int, seed: int, punct: str) -> str:
    """Synthetic prose of one 'author': words drawn with that author's own frequencies and punctuation."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(vocab))]
    words = rng.choices(vocab, weights=weights, k=n_words)
    out = []
    for i, w in enumerate(words):
        out.append(w + (punct if i % 9 == 8 else ""))
    return " ".join(out)


VOCAB_A = ["the", "of", "and", "to", "a", "in", "that", "it", "was", "he", "i", "his", "with", "had", "as", "for"]
VOCAB_B = ["upon", "which", "whom", "whilst", "thy", "thee", "but", "not", "shall", "yet", "nor", "hath", "ere", "unto"]


def test_bags_count_words_and_normalise_typography():
    text = "“Yes,” she said -- and left; he stayed—alone. " * 30
    toks = tokens(text)
    assert toks[:4] == ['"', "yes", ",", '"'] and toks.count("—") == 60  # `--` and — are one dash
    bags = make_bags(text, bag_words=50)
    assert len(bags) == 4  # 7 words x 30 = 210 words -> 4 full bags, the 10-word tail dropped
    assert all(sum(t[0].isalpha() for t in b) == 50 for b in bags)


def test_two_synthetic_authors_are_told_apart_exactly():
    a = Candidate("a", "Author A", "Book A", _author_text(VOCAB_A, 6000, 1, ","), _author_text(VOCAB_A, 2000, 2, ","))
    b = Candidate("b", "Author B", "Book B", _author_text(VOCAB_B, 6000, 3, ";"), _author_text(VOCAB_B, 2000, 4, ";"))
    test = build_test(a, [b], bag_words=200, n_features=20)
    v = test.validity
    assert v["valid"] and v["own_held_out"]["target_share"] == 1.0 and v["own_held_out"]["bags"] == 10
    assert v["impostor_max_share"] == 0.0 and v["self_attribution"] == {"a": 1.0, "b": 1.0}
    ft = test.attribute(_author_text(VOCAB_A, 2000, 5, ","))
    base = test.attribute(_author_text(VOCAB_B, 2000, 6, ";"))
    assert (ft["target_bags"], ft["bags"], base["target_bags"]) == (10, 10, 0)
    assert ft["centroid"]["target_share"] == 1.0 and base["shares"] == {"a": 0.0, "b": 1.0}
    out = verdict(v, ft, base)
    assert out["passed"] and out["fisher_p"] == pytest.approx(1 / 184756)  # 1 / C(20, 10)
    assert not verdict(v, ft, ft)["passed"]  # base text attributed like the tuned one: no pass


def test_wilson_and_fisher_known_values():
    lo, hi = wilson(14, 15)
    assert lo == pytest.approx(0.702, abs=1e-3) and hi == pytest.approx(0.988, abs=1e-3)
    assert wilson(0, 0) == [0.0, 1.0]
    assert fisher_greater(4, 4, 0, 4) == pytest.approx(1 / 70)


def test_reference_authors_attributed_to_themselves():
    """Held-out bags (last 20% of each book) of at least 10 of the 12 reference authors go to their author >= 70%."""
    books = load_reference(_reference_dir())
    assert len(books) == 12
    target, *others = books
    test = build_test(
        Candidate(target.key, target.author, target.title, *split_book(target.text)),
        [Candidate(b.key, b.author, b.title, *split_book(b.text)) for b in others],
    )
    own = test.validity["self_attribution"]
    assert len(own) == 12
    assert sum(share >= 0.7 for share in own.values()) >= 10, own
    assert test.validity["valid"]


def test_identify_the_corpus_author(tmp_path):
    gut = write(tmp_path / "pg1342.txt", "Title: Pride and Prejudice\nAuthor: Jane Austen\n\n*** START ***\nIt is.")
    who = identify(gut)
    assert (who.key, who.author, who.title) == ("austen", "Jane Austen", "Pride and Prejudice")
    assert who.found_by == "Gutenberg header"
    named = identify(tmp_path / "gaskell__north_and_south.txt")
    assert (named.key, named.author, named.title) == ("gaskell", "Elizabeth Gaskell", "North and South")
    frank = identify(tmp_path / "frankenstein_chunks.csv")
    assert frank.author == "Mary Shelley" and len(frank.prompts) == 5
    plain = identify(tmp_path / "my_story.txt")
    assert plain.author == "the author of my story" and plain.prompts == []
    forced = identify(tmp_path / "frankenstein_chunks.csv", author="Percy Shelley", title="Zastrozzi")
    assert (forced.author, forced.title, forced.prompts) == ("Percy Shelley", "Zastrozzi", [])


def test_corpus_prompts_are_paragraph_openings():
    texts = ["Short.", *(f"Paragraph {i} opens with these words and then goes on for a while." for i in range(10))]
    prompts = corpus_prompts(texts)
    assert len(prompts) == 5 and prompts[0] == "Paragraph 0 opens with these words and then"
    assert all(len(p.split()) == 8 for p in prompts)


# ------------------------------------------------------------------------------------------------ the CLI


def _synthetic_reference(folder: Path, authors: dict[str, list[str]], words: int = 3000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (key, vocab) in enumerate(authors.items()):
        name = f"{key}__book.txt"
        write(folder / name, _author_text(vocab, words, 10 + i, ";" if i % 2 else ","))
        rows.append({"file": name, "author": key, "title": f"Book of {key}"})
    write(folder / "MANIFEST.json", json.dumps(rows))
    return folder


@pytest.fixture
def author_corpus(tmp_path) -> Path:
    """A corpus by 'Author A' with a validation split big enough for 200-word bags."""
    lines = [_author_text(VOCAB_A, 60, s, ",") + "." for s in range(120)]
    return write(tmp_path / "a__the_book.txt", "\n\n".join(lines))


def test_style_attribute_cli(cli, tmp_path, author_corpus):
    ref = _synthetic_reference(tmp_path / "ref", {"b": VOCAB_B, "c": VOCAB_B[::-1] + VOCAB_A[:3]})
    mine = write(tmp_path / "mine.txt", _author_text(VOCAB_A, 1200, 77, ","))
    theirs = write(tmp_path / "theirs.txt", _author_text(VOCAB_B, 1200, 78, ";"))
    args = ["--corpus", author_corpus, "--reference", ref, "--bag-words", "200", "--set", "data.split=block"]
    result = cli("style", "attribute", mine, theirs, *args, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["validity"]["valid"] and [c["key"] for c in doc["candidates"]] == ["a", "b", "c"]
    first, second = doc["texts"]
    assert first["target"] == "a" and first["bags"] == 6 and first["target_share"] == 1.0
    assert second["target_share"] == 0.0 and len(first["interval"]) == 2 and set(first["shares"]) == {"a", "b", "c"}
    table = cli("style", "attribute", mine, *args)
    assert table.exit_code == 0 and "validity: valid" in table.stdout and "12/12 bags" in table.stdout


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "short_text", "one_author"])
def test_style_attribute_bad_input(cli, tmp_path, author_corpus, case):
    ref = tmp_path / "ref"
    text = write(tmp_path / "mine.txt", _author_text(VOCAB_A, 1200, 77, ","))
    expect = {
        "missing": "reference set not found",
        "empty": "is empty",
        "binary": "is not text",
        "short_text": "fewer than one bag",
        "one_author": "at least one other author",
    }[case]
    if case == "empty":
        ref.mkdir()
    elif case == "binary":
        _synthetic_reference(ref, {"b": VOCAB_B})
        (ref / "b__book.txt").write_bytes(b"\x00\x01\x02" * 100)
    elif case == "short_text":
        _synthetic_reference(ref, {"b": VOCAB_B})
        text = write(tmp_path / "mine.txt", "Too short to judge.")
    elif case == "one_author":  # the set holds only the corpus's own author, who leaves the impostors
        _synthetic_reference(ref, {"a": VOCAB_A})
    result = cli("style", "attribute", text, "--corpus", author_corpus, "--reference", ref, "--bag-words", "200")
    assert result.exit_code == 2, result.stdout
    assert expect in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # one message (rich may wrap it)


def test_eval_attribution_then_ab_page(cli, tmp_path, tiny_run, tiny_model_dir):
    """The whole path on a tiny run: generation for bags, the report with its chart, then the blind A/B page
    answered in headless Chromium and scored."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ref = _synthetic_reference(tmp_path / "ref", {"b": VOCAB_B, "c": VOCAB_A[::-1]})
    result = cli("eval", run, "--attribution", "--bags", "2", "--bag-words", "20", "--reference", ref)
    assert result.exit_code == 0, result.stderr
    ev = json.loads((run / "eval.json").read_text())
    a = ev["attribution"]
    assert set(a["results"]) == {"base", "finetuned", "held_out", "prompted"} and a["results"]["base"]["bags"] >= 2
    # The prompted baseline: the base model asked for the author's style, a row of the rule of its own.
    assert "beats_prompted" in a["verdict"]["checks"] and "prompted_fisher_p" in a["verdict"]
    assert a["prompted_instruction"].startswith("Continue this passage in the style of")
    assert all(
        len(g["generations_per_bag"]) == 3 and g["generations_per_bag"][0] >= 1 for g in a["generation"].values()
    )
    assert "verification" in a and set(a["verification"]["results"]) >= {"base", "finetuned", "prompted"}
    assert a["bag_words"] == 20 and a["reduced"] and "verdict" in a and "texts" not in a
    assert a["author"] == ev["corpus"]["author"] == "the author of corpus"
    assert (run / "attribution.png").read_bytes()[:4] == b"\x89PNG"
    html = (run / "eval.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # the loss curve and the attribution chart, embedded
    md = (run / "eval.md").read_text()
    assert "Who wrote this?" in md and ("PASS" in md or "FAIL" in md) and "Shelley" not in md
    assert "validity" in result.stdout

    result = cli("ab", run, "--pairs", "4", "--words", "8")
    assert result.exit_code == 0, result.stderr
    key = json.loads((run / "ab-key.json").read_text())
    page = (run / "ab.html").read_text()
    assert "finetuned" not in page and "held_out" not in page  # labels hidden
    assert result.exit_code == 0 and cli("ab", run).exit_code == 2  # the page exists: refuse to overwrite
    answers = _answer_in_chromium(run / "ab.html", key, tmp_path)
    scored = cli("ab", "score", answers, "--key", run / "ab-key.json", "--json")
    assert scored.exit_code == 0, scored.stderr
    tally = json.loads(scored.stdout)
    assert tally["answered"] == 4
    assert tally["comparisons"]["base"]["finetuned_picked"] == 2  # the reader always picked the tuned side
    assert tally["comparisons"]["held_out"]["finetuned_picked"] == 0  # ...except against the author: never
    bad = cli("ab", "score", answers, "--key", write(tmp_path / "k.json", '{"page": "other", "pairs": []}'))
    assert bad.exit_code == 2 and "key is for page" in bad.stderr


def _answer_in_chromium(page: Path, key: dict, tmp_path: Path) -> Path:
    """Click the answers a reader who prefers the fine-tuned text against the base model, and the author's own
    text against the fine-tuned one, would click; download them; return the downloaded file."""
    from playwright.sync_api import sync_playwright

    from test_serve import _chromium

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
        try:
            tab = browser.new_page()
            tab.goto(page.as_uri())
            for p in key["pairs"]:
                want = "finetuned" if p["kind"] == "base" else "held_out"
                side = "left" if p["left"] == want else "right"
                tab.check(f'input[name="{p["id"]}"][value="{side}"]')
            assert tab.inner_text("#status") == "4 of 4 pairs answered"
            with tab.expect_download() as dl:
                tab.click("#download")
            out = tmp_path / "ab-answers.json"
            dl.value.save_as(out)
        finally:
            browser.close()
    return out


def test_load_reference_rejects_a_bad_manifest(tmp_path):
    write(tmp_path / "MANIFEST.json", "{not json")
    with pytest.raises(ShelleyError, match="not valid JSON"):
        load_reference(tmp_path)


def test_delta_sentence_says_raised_or_lowered():
    from shelley.eval.report import style_labels, style_sentences
    from shelley.records import StyleResult

    style = StyleResult(reference="held out", features=["the"], delta_reduction=-0.05, groups={})
    assert "raised Delta by 5%" in style_sentences(style, "Jane Austen")[0]
    style.delta_reduction = 0.2
    assert "lowered Delta by 20%" in style_sentences(style, "Jane Austen")[0]
    style.groups = {"held_out": {}, "author_train_sample": {}}
    assert style_labels(style, "Jane Austen") == {
        "author_train_sample": "Jane Austen (train, same length)",
        "held_out": "Jane Austen (held out, reference)",
    }


def test_bag_text_opens_with_the_side_by_side_samples(monkeypatch):
    """The report's side-by-side samples count toward the bags: the rounds write only the rest, with seeds past
    the one those samples used, and the text starts with them."""
    import shelley.generate
    from shelley.config import GenerationConfig
    from shelley.eval.voice import generate_for_bags

    calls = []

    def fake_generate(model, tokenizer, prompts, gen, *, seed=None):
        calls.append((seed, gen.num_samples, gen.max_new_tokens))
        return [" ".join(["round"] * 100) for _ in range(len(prompts) * gen.num_samples)]

    monkeypatch.setattr(shelley.generate, "generate_texts", fake_generate)
    gen = GenerationConfig(seed=7)
    prompts = ["It was", "The night"]
    alone = generate_for_bags(None, None, prompts, gen, 1000)
    rows_alone = sum(n * len(prompts) for _, n, _ in calls)
    calls.clear()
    first = [" ".join(["side"] * 60) for _ in range(8)]  # 480 words already written
    reused = generate_for_bags(None, None, prompts, gen, 1000, first=first)
    assert reused["text"].startswith(first[0]) and reused["words"] >= 1000
    assert reused["samples"] == len(first) + sum(n * len(prompts) for _, n, _ in calls)
    assert sum(n * len(prompts) for _, n, _ in calls) < rows_alone  # fewer rows written than without them
    assert calls[0][0] == 8 and all(t == 256 for _, _, t in calls)  # seeds start past gen.seed
    assert alone["text"].count("side") == 0


def test_side_by_side_samples_come_from_the_bag_pass(tiny_tokenizer_dir):
    """Written in one pass, the side-by-side samples are the very samples a separate full-length generation
    with the same seed writes (the end of text is held off in both), and they open their bag rows."""
    from transformers import AutoTokenizer

    from conftest import tiny_causal_lm
    from shelley.config import GenerationConfig
    from shelley.eval.voice import generate_for_bags
    from shelley.generate import generate_texts

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.pad_token = tok.eos_token
    model = tiny_causal_lm("llama", len(tok), seed=5, max_positions=300)
    gen = GenerationConfig(max_new_tokens=10, temperature=1.0, top_k=30, top_p=0.9, seed=3)
    prompts = ["The storm", "My"]
    out = generate_for_bags(model, tok, prompts, gen, 10, side_by_side=3)
    assert len(out["side_by_side"]) == 6 and out["samples"] == 6  # one round: 3 rows per prompt were enough
    alone = generate_texts(
        model, tok, prompts, gen.model_copy(update={"min_new_tokens": 10, "num_samples": 3}), seed=gen.seed
    )
    assert out["side_by_side"] == alone
    assert out["text"].startswith(alone[0]) and all(head in out["text"] for head in alone)
    assert out["words"] > sum(len(h.split()) for h in alone)  # the rows go on past their heads


def test_scene_ab_page_pairs_scenes_with_the_authors_own_passages(cli, tmp_path, tiny_run):
    from shelley.eval.ab import build_scene_page, score

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    tuned = [f"Scene {i} began.\n\n" + " ".join(["the wind rose"] * 40) + "." for i in range(3)]
    own = [f"Passage {i} of mine.\n\n" + " ".join(["my heart sank"] * 30) + "." for i in range(3)]
    doc = {"author": "A. Writer", "title": "A Book", "words": 100}
    write(run / "scene-texts.json", json.dumps(doc | {"texts": {"finetuned": tuned, "base": tuned, "author": own}}))
    result = cli("ab", run, "--scenes")
    assert result.exit_code == 0, result.stderr
    page = (run / "ab-scenes.html").read_text()
    key = json.loads((run / "ab-scenes-key.json").read_text())
    assert "Which one did A. Writer write?" in page and "finetuned" not in page
    assert len(key["pairs"]) == 3 and {p["kind"] for p in key["pairs"]} == {"scene"}
    for p in key["pairs"]:  # both sides the same length: the shorter one's
        assert p["words"] == 4 + 3 * 30
    _, key2 = build_scene_page({"finetuned": tuned, "author": own}, "A. Writer", "A Book", seed=0)
    assert key2 == key  # seeded
    picks = {p["id"]: ("left" if p["left"] == "scene" else "right") for p in key["pairs"]}
    tally = score({"page": key["page"], "answers": picks}, key)
    assert tally["comparisons"]["scene"]["finetuned_picked"] == 0 and tally["answered"] == 3
    assert set(tally["comparisons"]) == {"scene"}
    missing = cli("ab", tiny_run, "--scenes", "--out", tmp_path / "x.html")
    assert missing.exit_code == 2 and "--scenes 10` first" in missing.stderr


def test_the_reference_set_beside_the_corpus_is_found_and_named(cli, tmp_path, author_corpus, monkeypatch):
    """A fresh clone has no SHELLEY_DATA_DIR: the reference/ folder beside the corpus (as ../shared/data lays it
    out) is used, and the output says which folder it was."""
    from shelley.data.books import default_reference_dir

    monkeypatch.delenv("SHELLEY_DATA_DIR", raising=False)
    monkeypatch.setenv("SHELLEY_HOME", str(tmp_path / "home"))
    ref = _synthetic_reference(tmp_path / "reference", {"b": VOCAB_B, "c": VOCAB_B[::-1] + VOCAB_A[:3]})
    assert default_reference_dir(author_corpus) == ref.resolve()
    books = tmp_path / "authors" / "a"
    books.mkdir(parents=True)
    assert default_reference_dir(books) == ref.resolve()  # a folder of books two levels below it
    assert default_reference_dir(None) == tmp_path / "home" / "reference"
    mine = write(tmp_path / "mine.txt", _author_text(VOCAB_A, 1200, 77, ","))
    result = cli("style", "attribute", mine, "--corpus", author_corpus, "--bag-words", "200",
                 "--set", "data.split=block", "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["texts"][0]["target_share"] > 0.5 and doc["reference"] == str(ref.resolve())
    assert doc["texts"][0]["verification"]["bags"] >= 1 and "c_at_1" in doc["verification_validity"]


NAMES = ["Victor", "Elizabeth", "Clerval", "Justine"]


def _with_names(text: str, every: int, seed: int) -> str:
    """``text`` with a character's name after every ``every`` words, mid-sentence and capitalised."""
    rng = random.Random(seed)
    out = []
    for i, w in enumerate(text.split()):
        out.append(w)
        if i % every == 2:
            out.append(rng.choice(NAMES))
    return " ".join(out)


def test_a_name_only_signal_fools_the_names_in_test_and_not_the_default():
    """Author A and author B write almost alike (two pairs of function words swapped); only A's books name
    Victor, Elizabeth, Clerval and Justine. A text in B's style that names A's people goes to A when names
    are features, and to B when they are left out (the default)."""
    from shelley.eval.attribution import Candidate, build_test, name_words

    vocab_b = VOCAB_A[:]
    vocab_b[0], vocab_b[3], vocab_b[1], vocab_b[5] = vocab_b[3], vocab_b[0], vocab_b[5], vocab_b[1]
    a = Candidate("a", "A", "A's book", _with_names(_author_text(VOCAB_A, 6000, 1, ","), 6, 1),
                  _with_names(_author_text(VOCAB_A, 2000, 2, ","), 6, 2))  # fmt: skip
    vocab_c = VOCAB_A[::-1]
    others = [
        Candidate("b", "B", "B's book", _author_text(vocab_b, 6000, 3, ","), _author_text(vocab_b, 2000, 4, ",")),
        Candidate("c", "C", "C's book", _author_text(vocab_c, 6000, 5, ";"), _author_text(vocab_c, 2000, 6, ";")),
    ]
    pastiche = _with_names(_author_text(vocab_b, 2000, 7, ","), 6, 8)
    names_in = build_test(a, others, bag_words=200, keep_names=True)
    names_out = build_test(a, others, bag_words=200)
    assert names_in.validity["valid"] and names_out.validity["valid"]
    assert names_in.attribute(pastiche)["target_share"] == 1.0  # fooled by the names
    assert names_out.attribute(pastiche)["shares"]["b"] == 1.0  # the style is B's
    assert names_out.names_left_out == ["clerval", "elizabeth", "justine", "victor"] and names_in.names_left_out is None
    assert not set(names_out.attributor.features) & {"victor", "elizabeth"}
    # Sentence openers are not names; a word written in lower case mid-sentence is not one either.
    assert name_words(["He met Victor there. Then he went on. Then Victor slept, and victor was a word too. "
                       "We saw Victor again and Victor once more."]) == set()  # fmt: skip
    assert name_words(["He met Victor there, and Victor slept, and so did Victor."]) == {"victor"}


def test_c_at_1_f05u_and_brier_on_hand_computed_examples():
    from shelley.eval.verify import brier, c_at_1, f05u

    truth = [1, 1, 0, 0, 1]
    scores = [0.9, 0.5, 0.2, 0.7, 0.5]  # right, unanswered, right, wrong, unanswered
    assert c_at_1(truth, scores) == pytest.approx((2 + 2 * 2 / 5) / 5)  # 0.56
    assert brier(truth, scores) == pytest.approx(1 - (0.01 + 0.25 + 0.04 + 0.49 + 0.25) / 5)  # 0.792
    # tp 1 (0.9), fp 1 (0.7), fn 0, unanswered 2: 1.25 / (1.25 + 0.25 * 2 + 1)
    assert f05u(truth, scores) == pytest.approx(1.25 / 2.75)
    assert c_at_1([1, 0], [0.5, 0.5]) == 0.0 and c_at_1([1, 0], [0.8, 0.1]) == 1.0


def test_general_impostors_separates_two_authors():
    """On a synthetic two-author case (plus a third as an extra impostor) the verifier scores the author's
    held-out bags high and the others' low, calibrated on the validity set."""
    from shelley.eval.attribution import Candidate, build_test

    a = Candidate("a", "A", "A's", _author_text(VOCAB_A, 6000, 1, ","), _author_text(VOCAB_A, 2000, 2, ","))
    others = [
        Candidate("b", "B", "B's", _author_text(VOCAB_B, 6000, 3, ";"), _author_text(VOCAB_B, 2000, 4, ";")),
        Candidate(
            "c", "C", "C's", _author_text(VOCAB_A[::-1], 6000, 5, ","), _author_text(VOCAB_A[::-1], 2000, 6, ",")
        ),
    ]
    test = build_test(a, others, bag_words=200)
    v = test.verifier.validity
    assert v["auc"] == 1.0 and v["c_at_1"] == 1.0 and v["brier"] > 0.8 and v["author_bags"] == 10
    mine = test.verify(_author_text(VOCAB_A, 1000, 9, ","))
    theirs = test.verify(_author_text(VOCAB_B, 1000, 10, ";"))
    assert mine["the author's"] == 5 and theirs["not the author's"] == 5
    assert mine["mean_score"] > 0.8 > 0.2 > theirs["mean_score"]


def test_bag_size_curve_on_the_command_line(cli, tmp_path, author_corpus):
    ref = _synthetic_reference(tmp_path / "ref", {"b": VOCAB_B, "c": VOCAB_B[::-1] + VOCAB_A[:3]}, words=12000)
    mine = write(tmp_path / "mine.txt", _author_text(VOCAB_A, 2400, 77, ","))
    plot = tmp_path / "curve.png"
    result = cli("style", "attribute", mine, "--corpus", author_corpus, "--reference", ref, "--bag-words", "200",
                 "--set", "data.split=block", "--curve", "--plot", plot, "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    curve = json.loads(result.stdout)["texts"][0]["curve"]
    sizes = [c for c in curve if c is not None]
    assert sizes and all(c["target_share"] == 1.0 for c in sizes)  # the author's text, at every size it fills
    assert sizes[0]["bags"] == 4  # 2,400 words in bags of 500
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_generations_per_bag_and_the_prompted_prompts(smol_tokenizer):
    from shelley.eval.voice import generations_per_bag, prompted_prompts

    # samples of 300, 500, 400, 900 words: bag 1 (0-999) spans samples 1-3, bag 2 (1000-1999) samples 3-4
    assert generations_per_bag([300, 500, 400, 900], 1000) == [3, 2]
    assert generations_per_bag([2500], 1000) == [1, 1]
    asked = prompted_prompts(smol_tokenizer, ["It was on a dreary night"], "Mary Shelley", "Frankenstein")[0]
    assert "in the style of Mary Shelley's Frankenstein" in asked and asked.endswith("It was on a dreary night")
    assert "<|im_start|>assistant" in asked  # through SmolLM2-Instruct's chat template
