"""Proof of the voice for a run: generate enough text from the base and the trained model to fill N bags each,
attribute every bag among the corpus's author and the reference authors, and apply the pre-registered rule.

The classifier never sees the corpus's validation split or the last 20% of a reference book while it is
fitted; those are its validity set (``shelley.eval.attribution.build_test``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shelley.config import GenerationConfig
from shelley.data.books import Identity, ReferenceBook, default_reference_dir, load_reference, slug
from shelley.errors import ShelleyError
from shelley.eval.attribution import (
    BAG_WORDS,
    TRAIN_SHARE,
    AttributionTest,
    Candidate,
    build_test,
    describe,
    verdict,
    word_count,
)
from shelley.io import write_png

FULL_BAGS = 20  # `shelley eval --attribution` default; fewer bags make a reduced, indicative test
SAMPLE_TOKENS = 256  # tokens per generated sample; samples are joined in order into the bags
WORDS_PER_TOKEN = 0.7  # a first guess of words per generated token, corrected after each round


def split_book(text: str, share: float = TRAIN_SHARE) -> tuple[str, str]:
    """(first ``share`` of the words, the rest), cut at a line break near the boundary so no word is split."""
    cut = int(len(text) * share)
    nl = text.find("\n", cut)
    cut = nl if 0 <= nl < cut + 2000 else cut
    return text[:cut], text[cut:]


def same_author(book: ReferenceBook, who: Identity) -> bool:
    return book.key == who.key or slug(book.author) == slug(who.author) or slug(book.title) == slug(who.title)


def build_attribution_test(
    who: Identity,
    train_texts: list[str],
    held_out_texts: list[str],
    reference_dir: str | Path | None = None,
    *,
    bag_words: int = BAG_WORDS,
    corpus: str | Path | None = None,
    keep_names: bool = False,
) -> AttributionTest:
    """The attribution test for the corpus's author against every other author of the reference set
    (``reference_dir``, else the default one, looked for beside ``corpus`` too)."""
    folder = Path(reference_dir or default_reference_dir(corpus))
    books = load_reference(folder)
    dropped = [f"{b.author}, {b.title}" for b in books if same_author(b, who)]
    impostors = [Candidate(b.key, b.author, b.title, *split_book(b.text)) for b in books if not same_author(b, who)]
    target = Candidate(who.key, who.author, who.title, "\n".join(train_texts), "\n".join(held_out_texts))
    held = word_count(target.held_out)
    if held < bag_words:
        raise ShelleyError(
            f"the corpus's validation split has {held} words, fewer than one bag of {bag_words}; "
            "lower --bag-words or raise data.validation_fraction"
        )
    test = build_test(target, impostors, bag_words=bag_words, dropped=dropped, keep_names=keep_names)
    test.reference = str(folder)
    return test


def generate_for_bags(
    model,
    tokenizer,
    prompts: list[str],
    gen: GenerationConfig,
    words_needed: int,
    *,
    first: list[str] | None = None,
    side_by_side: int = 0,
    on_round: Callable[[int, int], None] | None = None,
    max_rounds: int = 50,
) -> dict[str, Any]:
    """Continuations of ``prompts`` (prompts removed), in rounds with fresh seeds, until they hold
    ``words_needed`` words. Each round is one left-padded batch of every prompt x ``gen.num_samples``.

    ``first``: continuations the model already wrote for the same prompts with the same sampling settings (the
    report's side-by-side samples). They count toward the words and open the text, so the rounds only write
    the rest; the rounds' seeds then start one past ``gen.seed``, which those samples used.

    ``side_by_side``: write the report's side-by-side samples in the same pass instead: the first round has at
    least that many rows per prompt, and the first ``gen.max_new_tokens`` tokens of those rows are returned as
    ``side_by_side`` (prompt 1's samples, then prompt 2's, ...). Every sample is generated to SAMPLE_TOKENS
    with the end of text held off, so such a head is a ``gen.max_new_tokens``-token sample like the report's
    own (``eval.full_length``), and one batch of 256 steps replaces a separate one of 120."""
    from shelley.generate import generate_texts

    head_tokens = gen.max_new_tokens
    gen = gen.model_copy(update={"max_new_tokens": SAMPLE_TOKENS, "min_new_tokens": SAMPLE_TOKENS})
    samples = list(first or [])
    heads: list[str] = []
    words = sum(word_count(t) for t in samples)
    own_rows = own_words = 0  # this function's rounds: their words per row size the next round
    seed0 = gen.seed + (1 if samples else 0)
    t0 = time.perf_counter()
    for r in range(max_rounds):
        if words >= words_needed and (r or not side_by_side):
            break
        per_row = own_words / own_rows if own_rows else SAMPLE_TOKENS * WORDS_PER_TOKEN
        rows_needed = max(1, round((words_needed - words) / max(per_row, 1.0) * 1.05))
        gen.num_samples = max(1, min(8, -(-rows_needed // len(prompts))))
        if r == 0 and side_by_side:
            gen.num_samples = max(gen.num_samples, side_by_side)
            batch, firsts = generate_texts(model, tokenizer, prompts, gen, seed=seed0, heads=head_tokens)
            n = gen.num_samples
            heads = [h for i in range(len(prompts)) for h in firsts[i * n : i * n + side_by_side]]
        else:
            batch = generate_texts(model, tokenizer, prompts, gen, seed=seed0 + r)
        samples += batch
        new = sum(word_count(t) for t in batch)
        words, own_rows, own_words = words + new, own_rows + len(batch), own_words + new
        if on_round:
            on_round(min(words, words_needed), words_needed)
    if words < words_needed:
        raise ShelleyError(
            f"the model wrote only {words} of the {words_needed} words needed in {max_rounds} rounds; "
            "lower --bags or check its generations"
        )
    out = {"text": "\n\n".join(samples), "samples": len(samples), "words": words, "seconds": time.perf_counter() - t0}
    out["sample_words"] = [word_count(t) for t in samples]  # where one generation ends and the next begins
    return out | ({"side_by_side": heads} if side_by_side else {})


def generations_per_bag(sample_words: list[int], bag_words: int) -> list[int]:
    """How many separate generations (different prompts and seeds) each full bag of the joined text draws on."""
    ends, total = [], 0
    for n in sample_words:
        total += n
        ends.append(total)
    out = []
    for b in range(total // bag_words):
        lo, hi = b * bag_words, (b + 1) * bag_words
        starts = [0, *ends[:-1]]
        out.append(sum(1 for s, e in zip(starts, ends, strict=True) if s < hi and e > lo))
    return out


PROMPTED_INSTRUCTION = "Continue this passage in the style of {author}'s {title}, in the same voice:\n\n{prompt}"


def prompted_prompts(tokenizer, prompts: list[str], author: str, title: str) -> list[str]:
    """The prompted baseline (issue 48): each eval prompt wrapped in a request to write like the author, through
    the model's chat template when it has one (an instruction-tuned base), the passage itself opening the reply
    so the model carries it on; as a plain preface otherwise."""
    out = []
    for p in prompts:
        ask = PROMPTED_INSTRUCTION.format(author=author, title=title, prompt=p)
        if isinstance(getattr(tokenizer, "chat_template", None), str):
            chat = [{"role": "user", "content": ask}]
            out.append(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + p)
        else:
            out.append(ask.replace("\n\n" + p, "") + "\n\n" + p)
    return out


def judge_voice(test: AttributionTest, texts: dict[str, str], bags: int) -> dict[str, Any]:
    """Attribution of base, fine-tuned and held-out author text, with validity and the pass rule. The held-out
    row is the validity check's own (the same text, already attributed)."""
    rows = {who: test.attribute(text) for who, text in texts.items()}
    rows["held_out"] = dict(test.validity["own_held_out"])
    for r in rows.values():
        r["shares"] = {k: round(v, 4) for k, v in r["shares"].items()}
    out = {
        "target": test.target,
        "author": test.target_name,
        "bag_words": test.bag_words,
        "bags_requested": bags,
        "reduced": bags < FULL_BAGS,
        "candidates": test.candidates,
        "dropped": test.dropped,
        "validity": test.validity,
        "results": rows,
        "reference": test.reference,
        "names_left_out": test.names_left_out,
    }
    if test.verifier is not None:
        out["verification"] = {
            "method": "General Impostors (Koppel & Winter 2014), calibrated on the validity set",
            "validity": test.verifier.validity,
            "results": {who: test.verify(text) for who, text in texts.items()},
        }
    if "base" in rows and "finetuned" in rows:
        out["verdict"] = verdict(test.validity, rows["finetuned"], rows["base"], rows.get("prompted"))
    return out


def summary_lines(a: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """The attribution result in a few plain sentences (for the terminal and the reports)."""
    v = a["validity"]
    own = v["own_held_out"]
    lines = [
        *([f"reference set: {a['reference']}"] if a.get("reference") else []),
        *(
            [f"names left out of the features ({len(a['names_left_out'])}): {', '.join(a['names_left_out'])}"]
            if a.get("names_left_out")
            else []
        ),
        f"validity ({'valid' if v['valid'] else 'NOT VALID'}): {a['author']}'s held-out text {describe(own)} "
        f"to {a['author']}; most of another author's held-out bags given to {a['author']}: "
        f"{100 * v['impostor_max_share']:.0f}% ({v['impostor_max_author']})",
    ]
    for who, r in a["results"].items():
        if who == "held_out":
            continue
        lines.append(f"{labels.get(who, who)}: {describe(r)} attributed to {a['author']}")
    if a.get("generation"):
        made = "; ".join(
            f"{labels.get(who, who)} {g['words']:,} words ({g['samples']} samples) in {g['seconds']:.0f} s"
            for who, g in a["generation"].items()
        )
        lines.append(f"text written for the test: {made}")
    if a.get("verification"):
        ver, vv = a["verification"], a["verification"]["validity"]
        auc = "—" if vv["auc"] is None else f"{vv['auc']:.2f}"
        mine = "the author's"
        parts = [
            f"{labels.get(w, w)} {r[mine]}/{r['bags']} bags {mine}, {r['undecided']} undecided"
            for w, r in ver["results"].items()
        ]
        lines.append(
            f"open-set verification (General Impostors): on the validity set AUC {auc}, c@1 {vv['c_at_1']:.2f}, "
            f"F0.5u {vv['f05u']:.2f}, Brier {vv['brier']:.2f}; " + "; ".join(parts)
        )
    if a.get("prompted_instruction"):
        lines.append("prompted base: the base model asked: " + a["prompted_instruction"].split("\n")[0])
    per_bag = {
        w: g["generations_per_bag"] for w, g in (a.get("generation") or {}).items() if g.get("generations_per_bag")
    }
    if per_bag:
        lines.append("separate generations per bag (fewest, median, most): " + "; ".join(
            f"{labels.get(w, w)} {'/'.join(map(str, v))}" for w, v in per_bag.items()))  # fmt: skip
    if "verdict" in a:
        vd = a["verdict"]
        word = "PASS" if vd["passed"] else "FAIL"
        reduced = " (reduced run: indicative only; `shelley eval RUN --attribution` runs the full test)" * a["reduced"]
        vs = f"; vs the prompted base p = {vd['prompted_fisher_p']:.2g}" if "prompted_fisher_p" in vd else ""
        lines.append(f"{word}: one-sided Fisher exact p = {vd['fisher_p']:.2g}{vs}{reduced}")
    return lines


def plot_attribution(a: dict[str, Any], labels: dict[str, str], path: Path) -> Path:
    """Share of bags attributed to each author, one bar group per text (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [(who, r) for who, r in a["results"].items()]
    authors = [c["key"] for c in a["candidates"]]
    names = {c["key"]: c["name"] for c in a["candidates"]}
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(authors) + 2.2))
    y = np.arange(len(authors))
    height = 0.8 / max(1, len(rows))
    for i, (who, r) in enumerate(rows):
        label = labels.get(who, who) + f" ({r['bags']} bags)"
        ax.barh(y + i * height, [r["shares"].get(k, 0) for k in authors], height, label=label)
    ax.set_yticks(y + 0.4 - height / 2, [names[k] + (" (target)" if k == a["target"] else "") for k in authors])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of {a['bag_words']:,}-word bags attributed (linear SVM)")
    ax.set_title(f"Who wrote this? Attribution among {len(authors)} authors")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=len(rows), fontsize=8, frameon=False)
    fig.tight_layout()
    return write_png(path, fig)


def check_bag(name: str, body: str, bag_words: int) -> None:
    """A text to attribute must fill at least one bag."""
    from shelley.eval.attribution import word_count

    if word_count(body) < bag_words:
        raise ShelleyError(
            f"{name} has {word_count(body)} words, fewer than one bag of {bag_words}; "
            "pass a longer text or lower --bag-words"
        )


def texts_curve(texts: list[str], corpus: Path, cfg, reference: str | None, plot: Path) -> list[dict[str, Any]]:
    """``bag_size_curve`` for texts named on the command line (files or the texts themselves), plotted."""
    from shelley.data.ingest import text_argument

    named = dict(text_argument(t) for t in texts)
    who, train, held = _author_corpus(corpus, cfg)
    curve = bag_size_curve(
        who, train, held, named, reference or cfg.eval.reference_dir, corpus=corpus, keep_names=cfg.eval.keep_names
    )
    plot_curve(curve, who.author, plot)
    return curve


def _author_corpus(corpus: Path, cfg) -> tuple[Identity, list[str], list[str]]:
    """(the author, train texts, held-out texts) of a run dir, dataset dir or corpus file, folder or manifest."""
    from shelley.data.corpus import identity, open_corpus

    found = open_corpus(corpus, cfg.data)
    return identity(found, cfg.data), found.train, found.validation


def attribution_test_for(
    cfg, who: Identity, train_texts, held_out_texts, reference_dir=None, *, corpus=None
) -> AttributionTest:
    """``build_attribution_test`` with the config's reference set, bag size and names setting."""
    return build_attribution_test(
        who, train_texts, held_out_texts, reference_dir or cfg.eval.reference_dir, bag_words=cfg.eval.bag_words,
        corpus=corpus, keep_names=cfg.eval.keep_names,
    )  # fmt: skip


def optional_attribution_test(cfg, who: Identity, train_texts, held_out_texts, reference_dir=None, *, corpus=None):
    """(``attribution_test_for``'s test, None), or (None, why there is none): without a reference set the
    caller goes on and says how to get one."""
    try:
        return attribution_test_for(cfg, who, train_texts, held_out_texts, reference_dir, corpus=corpus), None
    except ShelleyError as exc:
        return None, str(exc)


def attribute_texts(texts: list[str], corpus: Path, cfg, reference: str | None = None):
    """Attribute each text (a file path or the text itself) among the author of ``corpus`` (a run dir, dataset
    dir or corpus file) and the reference authors. Returns (identity, test, one result per text)."""
    from shelley.data.ingest import text_argument

    named = [text_argument(t) for t in texts]
    for name, body in named:
        check_bag(name, body, cfg.eval.bag_words)
    who, train, held = _author_corpus(corpus, cfg)
    test = attribution_test_for(cfg, who, train, held, reference, corpus=corpus)
    return (
        who,
        test,
        [{"text": name} | test.attribute(body) | {"verification": test.verify(body)} for name, body in named],
    )


CURVE_SIZES = (500, 1000, 2000, 5000)


def bag_size_curve(
    who: Identity,
    train_texts: list[str],
    held_out_texts: list[str],
    texts: dict[str, str],
    reference_dir: str | Path | None = None,
    *,
    sizes: tuple[int, ...] = CURVE_SIZES,
    corpus: str | Path | None = None,
    keep_names: bool = False,
) -> list[dict[str, Any]]:
    """Accuracy against bag size: at each size the test is fitted again, and the author's held-out share, the
    worst impostor's share and each text's share (with Wilson intervals) are measured. A size is left out where
    the author's held-out text or a text has no whole bag of it (Eder 2015 found ~5,000 words stable for novels;
    1,000 is the default here because generated text is costly)."""
    from shelley.eval.attribution import word_count

    rows = []
    for size in sizes:
        if word_count("\n".join(held_out_texts)) < size:
            continue
        test = build_attribution_test(
            who, train_texts, held_out_texts, reference_dir, bag_words=size, corpus=corpus, keep_names=keep_names
        )
        own = test.validity["own_held_out"]
        row = {
            "bag_words": size,
            "valid": test.validity["valid"],
            "own_held_out": {k: own[k] for k in ("bags", "target_bags", "target_share", "interval")},
            "impostor_max_share": test.validity["impostor_max_share"],
            "texts": {},
        }
        for name, body in texts.items():
            if word_count(body) >= size:
                got = test.attribute(body)
                row["texts"][name] = {k: got[k] for k in ("bags", "target_bags", "target_share", "interval")}
        rows.append(row)
    return rows


def plot_curve(rows: list[dict[str, Any]], author: str, path: Path) -> Path:
    """Share of bags attributed to the author against bag size, one line per text, intervals as bars (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    series = {"own held-out": [(r["bag_words"], r["own_held_out"]) for r in rows]}
    for r in rows:
        for name, got in r["texts"].items():
            series.setdefault(name, []).append((r["bag_words"], got))
    for name, pts in series.items():
        xs = [x for x, _ in pts]
        ys = [g["target_share"] for _, g in pts]
        err = [[y - g["interval"][0] for y, (_, g) in zip(ys, pts, strict=True)],
               [g["interval"][1] - y for y, (_, g) in zip(ys, pts, strict=True)]]  # fmt: skip
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
    ax.plot([r["bag_words"] for r in rows], [r["impostor_max_share"] for r in rows], "k:", label="worst impostor")
    ax.set_xscale("log")
    ax.set_xlabel("words per bag")
    ax.set_ylabel(f"share of bags to {author}")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return write_png(path, fig)
