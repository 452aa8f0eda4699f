"""Which corpus is this: a corpus file, a folder or manifest of an author's books, a dataset dir of ``shelley data
build`` or a run dir, resolved once into a ``Corpus`` (``shelley.corpus``), with its identity. The only module
besides ``Run`` that reads a dataset dir or tells splits apart."""

from __future__ import annotations

import json
from pathlib import Path

from shelley.config import DataConfig, ShelleyConfig
from shelley.corpus import Corpus, is_dataset_dir
from shelley.data.books import Identity, corpus_prompts, identify
from shelley.data.build import clean_kwargs, corpus_path, load_corpus, prepare_splits
from shelley.data.clean import clean_snippets
from shelley.errors import ShelleyError
from shelley.run import Run


def open_corpus(path: str | Path, data_cfg: DataConfig, *, split: bool = True) -> Corpus:
    """The corpus at ``path``: a run dir (the corpus it trained on), a dataset dir, or a corpus file, folder or
    manifest, split as ``data build`` would (``split=False``: cleaned and kept whole, as one train split)."""
    path = Path(path)
    run = Run.find(path) if path.is_dir() else None
    if run is not None:
        return run.corpus()
    if is_dataset_dir(path):
        return _dataset_corpus(path)
    if not split:
        snippets, _ = load_corpus(path, data_cfg)
        kept, _ = clean_snippets(snippets, **clean_kwargs(data_cfg))
        if not kept:
            raise ShelleyError(f"all rows of {path} are empty or noise after cleaning; check --text-column")
        return Corpus({"train": [s.text for s in kept]}, source=str(path))
    splits, report = prepare_splits(path, data_cfg)
    return Corpus({k: [s.text for s in v] for k, v in splits.items()}, source=str(path), books=report.get("books"))


def _dataset_corpus(path: Path) -> Corpus:
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    if "validation" not in ds:
        raise ShelleyError(f"{path} has no validation split; rebuild it with `shelley data build`")
    build = path / "build.json"
    report = json.loads(build.read_text()) if build.is_file() else {}
    texts = {name: list(ds[name]["text"]) for name in ds}
    return Corpus(texts, source=report.get("source"), books=report.get("books"))


def training_corpus(dataset: Path | None, cfg: DataConfig, on_note=None) -> Corpus:
    """The corpus to train on (a dataset dir, a corpus file, folder or manifest, else data.out when built, else
    data.source) with any data.extra_sources mixed in; ``on_note(message)`` hears about sources that were
    replaced or capped."""
    from shelley.data.sources import with_sources

    if dataset is None and Path(cfg.out).exists():
        dataset = Path(cfg.out)
    if dataset is None and not cfg.source and cfg.extra_sources:
        corpus = Corpus({"train": [], "validation": []})  # extra sources only
    else:
        corpus = open_corpus(dataset or corpus_path(None, cfg), cfg)
    train, val = with_sources(corpus.train, corpus.validation, cfg, on_note=on_note)
    return Corpus({"train": train, "validation": val}, source=corpus.source, books=corpus.books)


def identity(corpus: Corpus, data_cfg: DataConfig) -> Identity:
    """Whose the corpus is: what it recorded, else the config's ``data.author``/``data.title``, else what its
    source says (``books.identify``)."""
    return identify(corpus.source, corpus.author or data_cfg.author, corpus.title or data_cfg.title)


def with_identity(cfg: ShelleyConfig, corpus: Corpus) -> tuple[ShelleyConfig, Identity]:
    """A copy of ``cfg`` that records the corpus's author, title and eval prompts (a run saves its config with
    them; ``cfg`` itself is left as it was loaded), and the identity."""
    who = identity(corpus, cfg.data)
    out = cfg.model_copy(deep=True)
    out.data.author, out.data.title = who.author, who.title
    if out.eval.prompts is None:
        out.eval.prompts = corpus.prompts or who.prompts or corpus_prompts(corpus.validation)
    return out, who
