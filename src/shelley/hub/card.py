"""``shelley card RUN_DIR``: a Hugging Face model card (and a Space card) filled from what the run measured.

The metadata is built with ``huggingface_hub.ModelCardData`` (``model-index`` comes from ``EvalResult``), the
body from a jinja2 template in this package, so the result is exactly what the Hub parses.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Any

import yaml

from shelley.data.card import gutenberg_provenance
from shelley.io import atomic_write_text
from shelley.records import EvalResult
from shelley.run import Run


def _template(name: str) -> str:
    from importlib.resources import files

    return files("shelley.hub").joinpath(f"templates/{name}").read_text("utf-8")


def corpus_facts(run: Run, cfg) -> dict[str, Any]:
    """Where the training text came from and what was done to it (from the build report when there is one)."""
    report = run.build_report()
    source = report.get("source") or cfg.data.source or "a local corpus file"
    src_path = Path(source)
    gid, says_gutenberg = gutenberg_provenance(src_path)
    status = (
        "public domain in the USA (Project Gutenberg); check the laws of your country"
        if gid is not None or says_gutenberg
        else "unknown: check the licence of your corpus before sharing"
    )
    rows = report.get("split", {}).get("rows")
    if rows is None and run.corpus_file.exists():
        corpus = run.corpus()
        rows = {"train": len(corpus.train), "validation": len(corpus.validation)}
    overlap = report.get("overlap", {}).get("validation", {}).get("shared_fraction")
    return {
        "source": src_path.name if src_path.name else str(source),
        "gutenberg_id": gid,
        "status": status,
        "rows": rows,
        "split": report.get("split", {}).get("method", cfg.data.split),
        "cleaning": [
            {"step": c["step"], "changed": c.get("changed", 0), "removed": c.get("removed", 0)}
            for c in report.get("cleaning", [])
            if c.get("changed") or c.get("removed")
        ],
        "overlap": overlap,
        "books": report.get("books") or [],
    }


def base_model_id(cfg) -> str | None:
    """The Hub id of the base model, for ``base_model:`` metadata (None for scratch or local-only models)."""
    from shelley.models.registry import PRESETS

    if cfg.train.method == "scratch":
        return None
    if cfg.model.name in PRESETS:
        return PRESETS[cfg.model.name].hub_id
    name = cfg.model.name
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not Path(name).exists():
        return name
    return None


def card_metadata(results: EvalResult, cfg, out: Path, name: str, corpus: dict[str, Any]):
    from huggingface_hub import EvalResult as HubEvalResult
    from huggingface_hub import ModelCardData

    from shelley.data.books import slug
    from shelley.models.registry import PRESETS

    ppl = results.perplexity
    preset = PRESETS.get(cfg.model.name)
    dataset_name = (
        f"Project Gutenberg ebook #{corpus['gutenberg_id']}" if corpus["gutenberg_id"] else corpus["source"]
    ) + " (held-out split)"
    metric = {"task_type": "text-generation", "dataset_type": "text", "dataset_name": dataset_name}
    evals = [
        HubEvalResult(
            **metric,
            metric_type="perplexity",
            metric_value=ppl.finetuned.perplexity,
            metric_name="Validation perplexity",
            dataset_split="validation",
        ),
        HubEvalResult(
            **metric,
            metric_type="perplexity_ratio_vs_base",
            metric_value=ppl.ratio,
            metric_name="Perplexity ratio (this model / base)",
            dataset_split="validation",
        ),
    ]
    if ppl.finetuned.bits_per_byte is not None:
        evals.append(
            HubEvalResult(
                **metric,
                metric_type="bits_per_byte",
                metric_value=round(ppl.finetuned.bits_per_byte, 4),
                metric_name="Validation bits per byte",
                dataset_split="validation",
            )
        )
    if results.attribution:
        a = results.attribution
        evals.append(
            HubEvalResult(
                **metric,
                metric_type="attribution_share",
                metric_value=a.results["finetuned"]["target_share"],
                metric_name=f"Share of generated {a.bag_words:,}-word bags attributed to {a.author}",
                dataset_split="validation",
            )
        )
    if results.originality:
        evals.append(
            HubEvalResult(
                **metric,
                metric_type="max_copied_span_words",
                metric_value=results.originality.finetuned.longest_span_max,
                metric_name="Longest span copied from the corpus (words)",
                dataset_split="train",
            )
        )
    method = cfg.train.method
    tags = [
        "shelley",
        "text-generation",
        "creative-writing",
        "style-transfer",
        {"scratch": "from-scratch"}.get(method, method),
    ]
    if cfg.data.title:
        tags.append(slug(cfg.data.title).replace("_", "-"))
    return ModelCardData(
        model_name=name,
        language="en",
        license=preset.license if preset else ("apache-2.0" if method == "scratch" else "other"),
        library_name="peft" if (out / "adapter_config.json").exists() else "transformers",
        base_model=base_model_id(cfg),
        pipeline_tag="text-generation",
        tags=tags,
        eval_results=evals,
    )


def sample_rows(results: EvalResult, limit: int = 3) -> list[dict[str, Any]]:
    from shelley.eval.report import describe_copy

    rows = []
    for g in results.generations[:limit]:
        if not g.finetuned:
            continue
        orig = (g.finetuned_originality or [None])[0]
        rows.append({"prompt": g.prompt, "text": " ".join(g.finetuned[0].split()), "note": describe_copy(orig)})
    return rows


def render_model_card(run: Run, *, name: str | None = None) -> str:
    from huggingface_hub import ModelCard

    from shelley import __version__
    from shelley.eval.report import style_labels

    results = run.eval_result()
    cfg, out = run.config(), run.output
    name = name or run.root.resolve().name
    corpus = corpus_facts(run, cfg)
    data = card_metadata(results, cfg, out, name, corpus)
    method = cfg.train.method
    what = {
        "scratch": "a small GPT trained from scratch",
        "full": "a full fine-tune",
        "lora": "a LoRA adapter",
        "qlora": "a QLoRA adapter",
    }[method]
    base = base_model_id(cfg)
    author, title = results.author, results.title
    voice = f"the voice of {author}, trained on *{title}*" if author and title else "the voice of its training text"
    summary = f"{what.capitalize()}{f' of {base}' if base else ''} that writes in {voice}" + (
        f" ({corpus['source']})." if corpus["source"] else "."
    )
    command = "shelley run" if run.train_dir != run.root else "shelley train"
    card = ModelCard.from_template(
        data,
        template_str=_template("model_card.md.j2"),
        name=name,
        summary=summary,
        shelley_version=__version__,
        command=command,
        ppl=results.perplexity,
        labels=results.labels,
        unigram=results.unigram,
        originality=results.originality,
        style=results.style,
        style_rows=list(style_labels(results.style, results.author).items()),
        attribution=_attribution(results),
        gen_tokens=cfg.generation.max_new_tokens,
        samples=sample_rows(results),
        corpus=corpus,
        method=method,
        base_model=base,
        hardware=_hardware(),
        training=_training(results),
        hyper=yaml.safe_dump(results.hyperparameters, sort_keys=False).strip(),
        local_prompt=(results.generations[0].prompt if results.generations else "Once upon a time").replace('"', "'"),
    )
    return str(card)


def _attribution(results: EvalResult) -> dict[str, Any] | None:
    """The who-wrote-this result for the card: its sentences and the verdict."""
    if not results.attribution:
        return None
    from shelley.eval.report import attribution_sentences

    a = results.attribution
    return {"author": a.author, "authors": len(a.candidates), "lines": attribution_sentences(results)}


def _training(results: EvalResult) -> dict[str, Any]:
    from shelley.eval.report import training_sentence

    t = results.training
    if t is None:
        return {"sentence": "", "steps": "?", "train_seconds": 0.0, "tokens_per_second": 0.0, "tokens_seen": "?"}
    return {"sentence": training_sentence(t)} | t.summary()


def _hardware() -> str:
    import os

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    return f"CPU only, {os.cpu_count()} cores ({platform.machine()})"


def render_space_card(run: Run, *, model_repo: str, title: str | None = None) -> str:
    from huggingface_hub import SpaceCard, SpaceCardData

    results = run.eval_result()
    data = SpaceCardData(
        title=title or f"{run.root.resolve().name} demo",
        sdk="gradio",
        app_file="app.py",
        license="apache-2.0",
        models=[model_repo],
        tags=["shelley", "text-generation"],
        emoji="⚡",
        colorFrom="gray",
        colorTo="green",
        pinned=False,
    )
    return str(
        SpaceCard.from_template(
            data,
            template_str=_template("space_card.md.j2"),
            title=data.title,
            model_repo=model_repo,
            summary=f"it continues your text in the voice of {results.author} ({results.title}).",
            max_span=run.config().eval.max_copied_span,
            ppl=results.perplexity,
            labels=results.labels,
        )
    )


def write_model_card(run: Run, out: Path | None = None, *, name: str | None = None) -> Path:

    target = Path(out) if out else run.model_card
    atomic_write_text(target, render_model_card(run, name=name))
    return target


def write_space_card(run: Run, out: Path | None = None, *, model_repo: str) -> Path:

    target = Path(out) if out else run.space_card
    atomic_write_text(target, render_space_card(run, model_repo=model_repo))
    return target
