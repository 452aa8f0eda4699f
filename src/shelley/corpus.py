"""One corpus, whatever it was given as: the texts of each split, where they came from, and whose they are.

``Run.corpus()`` gives back the corpus a run trained on (``corpus.jsonl`` and what the run recorded of it);
``shelley.data.corpus.open_corpus`` resolves a corpus file, a folder or manifest of books, a dataset dir or a run
dir into one, once. Nothing else filters rows by split or reads a dataset dir, and the corpus's identity travels
here, not written into the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation", "test")
DATASET_DICT = "dataset_dict.json"  # what `datasets.save_to_disk` writes at the top of a DatasetDict


def is_dataset_dir(path: str | Path | None) -> bool:
    """A dataset dir of ``shelley data build`` (a saved ``DatasetDict``)."""
    return path is not None and (Path(path) / DATASET_DICT).is_file()


@dataclass(frozen=True)
class Corpus:
    texts: dict[str, list[str]]  # split -> its texts, in corpus order
    source: str | None = None  # the corpus file, folder or manifest it was built from (None: not recorded)
    author: str | None = None  # as given or recorded (None: found from the source, ``data.books.identify``)
    title: str | None = None
    prompts: list[str] | None = None  # the eval prompts recorded with it, if any
    books: list[dict[str, Any]] | None = field(default=None)  # a corpus of several books: each with its figures

    @property
    def train(self) -> list[str]:
        return self.texts.get("train", [])

    @property
    def validation(self) -> list[str]:
        return self.texts.get("validation", [])

    def rows(self) -> list[dict[str, Any]]:
        """``{text, split, row}`` rows, as a run records them in corpus.jsonl (train, then validation, then test)."""
        return [
            {"text": t, "split": name, "row": i}
            for name in SPLITS
            if name in self.texts
            for i, t in enumerate(self.texts[name])
        ]

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], **facts: Any) -> Corpus:
        """A corpus from ``{text, split}`` rows (a run's corpus.jsonl) and what else is known of it."""
        texts: dict[str, list[str]] = {}
        for r in rows:
            texts.setdefault(r["split"], []).append(r["text"])
        return cls(texts, **facts)
