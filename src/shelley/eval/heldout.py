"""Author, not book: base vs fine-tuned on a book by the corpus's author that the run never trained on.

The validation split measures how well a model learned *the book* (its held-out chapters share the book's
names, places and plot). A fan wants *the author*: on another of the author's books, a model that learned the
voice scores below the base at every context position, while one that learned the book's world scores better
only in the first tokens and worse once a page of context lets the base read the author from the context.
``shelley eval RUN --heldout-book FILE`` measures that: the mean loss by token position (``position_losses``)
in ``window``-token windows of the book, in bands of context, for both models on the same tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shelley.errors import ShelleyError

BANDS = ((1, 16), (17, 64), (65, 128), (129, 512), (513, 1023))
MAX_WINDOWS = 48  # 48 windows of 1,024 tokens: about half a minute per model and book on 2 cores


def band_name(lo: int, hi: int) -> str:
    return f"{lo}-{hi}"


def book_stream(path: Path, tokenizer, data_cfg, train_texts: list[str], cache_dir: Path) -> tuple[np.ndarray, dict]:
    """The book's cleaned text as one token stream (EOS after each snippet, as the validation split is scored),
    and what the report says of it. A book whose text the run trained on is refused: it is not held out."""
    from shelley.data.books import identify
    from shelley.data.build import clean_kwargs, load_corpus
    from shelley.data.clean import clean_snippets
    from shelley.finetune.packing import encode_stream

    path = Path(path)
    snippets, _ = load_corpus(path, data_cfg)
    kept, _ = clean_snippets(snippets, **clean_kwargs(data_cfg))
    texts = [s.text for s in kept]
    if not texts:
        raise ShelleyError(f"the held-out book {path} has no text after cleaning; pass a book file")
    seen = set(train_texts)
    trained = sum(t in seen for t in texts)
    if trained > 0.05 * len(texts):
        raise ShelleyError(
            f"{path.name} is not held out: {trained} of its {len(texts)} paragraphs are in the run's training text; "
            "name a book of the author that the run never trained on"
        )
    who = identify(path)
    stream = encode_stream(texts, tokenizer, cache_dir, f"heldout-{path.stem}")
    info = {"file": str(path), "title": who.title, "author": who.author, "paragraphs": len(texts)}
    return stream, info


def book_curve(model, stream: np.ndarray, prefix: list[int], window: int) -> dict[str, Any]:
    """The context curve of ``model`` over at most ``MAX_WINDOWS`` windows of the book, and its bands."""
    from shelley.models.perplexity import band, position_losses

    curve = position_losses(model, np.asarray(stream[: MAX_WINDOWS * window]), window=window, prefix=prefix)
    if not curve["windows"]:
        raise ShelleyError(f"the held-out book is shorter than one {window}-token window; pass a longer book")
    bands = {band_name(lo, hi): band(curve, lo, hi) for lo, hi in BANDS if lo < window}
    bands["all"] = float(np.mean(curve["loss"]))
    return {"windows": curve["windows"], "window": window, "bands": bands}


def judge_book(info: dict, curves: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The report's entry for one held-out book: both models' bands and whether the fine-tuned model is below
    the base in every band (the author's voice learned, not only the book's world)."""
    base, tuned = curves["base"]["bands"], curves["finetuned"]["bands"]
    worse = [b for b in base if b != "all" and tuned[b] is not None and tuned[b] >= base[b]]
    return info | {
        "window": curves["base"]["window"],
        "windows": curves["base"]["windows"],
        "bands": {"base": base, "finetuned": tuned},
        "better_everywhere": not worse,
        "worse_bands": worse,
    }


def heldout_lines(books: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """eval.md's section: one table per held-out book, loss (nats/token) by band of context."""
    lines = ["## The author's unseen books", ""]
    lines += [
        "Mean loss (nats/token) by token position in windows of a book by the corpus's author that training never "
        "saw: below the base at every position means the model learned the author, not only the book's world.",
        "",
    ]
    for b in books:
        names = list(b["bands"]["base"])
        lines += [f"### *{b['title']}* ({b['windows']} windows of {b['window']} tokens)", ""]
        lines += ["| model | " + " | ".join(f"positions {n}" if n != "all" else "all" for n in names) + " |"]
        lines += ["|---" * (len(names) + 1) + "|"]
        for who in ("base", "finetuned"):
            row = b["bands"][who]
            lines.append(f"| {labels[who]} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
        verdict = (
            "below the base at every position"
            if b["better_everywhere"]
            else f"not below the base at positions {', '.join(b['worse_bands'])}"
        )
        lines += ["", f"{labels['finetuned'].capitalize()}: {verdict}.", ""]
    return lines
