"""What more of the author's books bought, on one book's own held-out chapters:

    python -m bench.same_chapters RUN_ONE RUN_MANY --book FILE --name NAME

RUN_ONE trained on FILE alone; RUN_MANY on a folder or manifest of several books that includes FILE. Every book
is split on its own with the corpus's seed, so FILE's held-out chapters are the same in both runs (checked here,
text for text). The base model and both fine-tuned models are scored on exactly those texts: the same tokens,
windows and BOS as ``shelley eval``, perplexity with bits per byte beside it. The figures, with each run's
attribution verdict and share of a pass, go to docs/results/<NAME>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.results import RESULTS, commit, cpu_name


def _validation(run) -> list[str]:
    """The run's whole validation split, as its data dir holds it (the job may score only part of it)."""
    from datasets import load_from_disk

    return list(load_from_disk(str(run.data_dir))["validation"]["text"])


def _summary(run) -> dict[str, Any]:
    ev = run.eval_result()
    a = ev.attribution
    return {
        "run": str(run.root),
        "perplexity_own_validation": [ev.perplexity.base.perplexity, ev.perplexity.finetuned.perplexity],
        "steps": ev.training.steps if ev.training else None,
        "passes": ev.training.epochs if ev.training else None,
        "validation_rows": len(_validation(run)),
        "attribution": None
        if a is None
        else {
            "passed": a.verdict.get("passed"),
            "shares": {k: v.get("target_share") for k, v in a.results.items()},
        },
        "books": (ev.data or {}).get("books"),
        "scored": (ev.data or {}).get("scored"),
    }


def measure(run_one: Path, run_many: Path, book: Path) -> dict[str, Any]:
    from shelley.data.build import prepare_splits
    from shelley.eval.evaluate import validation_perplexity
    from shelley.finetune.methods import load_base_model, load_tokenizer_for_training
    from shelley.finetune.packing import encode_stream
    from shelley.generate.load import load_model_dir
    from shelley.run import Run

    one, many = Run.open(run_one), Run.open(run_many)
    cfg = one.config()
    splits, _ = prepare_splits(book, cfg.data)
    texts = [s.text for s in splits["validation"]]
    assert texts == _validation(one), "RUN_ONE's validation split is not FILE's held-out chapters"
    missing = set(texts) - set(_validation(many))
    assert not missing, f"{len(missing)} of FILE's held-out texts are not in RUN_MANY's validation split"
    tokenizer = load_tokenizer_for_training(cfg)
    stream = encode_stream(texts, tokenizer, Path("runs/.bench-cache"), f"same-{book.stem}")
    scores = {}
    for name, load in (
        ("base", lambda: load_base_model(cfg, for_training=False)),
        ("one_book", lambda: load_model_dir(one.output)),
        ("many_books", lambda: load_model_dir(many.output)),
    ):
        t0 = time.perf_counter()
        ppl = validation_perplexity(load(), tokenizer, stream, cfg)
        scores[name] = {k: ppl.get(k) for k in ("perplexity", "nll", "bits_per_byte", "bits_per_word", "tokens")}
        print(f"{name}: perplexity {ppl['perplexity']:.2f}, bits/byte {ppl.get('bits_per_byte')} "
              f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    return {
        "book": str(book),
        "held_out_rows": len(texts),
        "scores": scores,
        "one_book": _summary(one),
        "many_books": _summary(many),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_one", type=Path)
    ap.add_argument("run_many", type=Path)
    ap.add_argument("--book", type=Path, required=True)
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    figures = measure(args.run_one, args.run_many, args.book)
    doc = {"kind": "same_chapters", "name": args.name, "commit": commit(), "cpu": cpu_name(),
           "date": time.strftime("%Y-%m-%d"), **figures}  # fmt: skip
    out = RESULTS / f"{args.name}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
