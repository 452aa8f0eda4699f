"""Typed results: what training and evaluation measured, as one validated record each.

``TrainResult`` is what ``train`` returns and ``train_summary.json`` holds; ``EvalResult`` is what ``shelley eval``
and ``shelley run`` produce and ``eval.json`` holds. eval.md, eval.html, the model card, the Space card and the demo
all render from an ``EvalResult``. Both carry ``schema_version``; files without one were written before it
existed (version 1, the same shape) and load unchanged.

The deep parts (an attribution's per-author tables, a style group's figures) stay plain mappings: they are
rendered, not computed on, and their keys are documented where they are made (``eval.voice``, ``eval.style``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shelley.errors import ShelleyError

SCHEMA_VERSION = 1
DEFAULT_LABELS = {"base": "base", "finetuned": "fine-tuned"}


class _Record(BaseModel):
    # extra="allow": a figure added by a later release survives a read and a write by this one.
    # validate_assignment: a part set after construction (originality, style) is checked and typed too.
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class TrainResult(_Record):
    schema_version: int = SCHEMA_VERSION
    run_dir: Path
    steps: int
    stopped_early: bool = Field(description="Ended before train.steps, for the reason in stop_reason.")
    train_seconds: float
    tokens_seen: int
    tokens_per_second: float
    last_loss: float
    evals: list[dict[str, Any]] = Field(default_factory=list, description="Validation rows: step, loss, perplexity.")
    output_dir: Path | None = None
    stop_reason: str = Field("steps", description="steps, time budget, max epochs, early stopping, interrupted")
    epochs: float = Field(0.0, description="Passes over the training tokens.")
    best_step: int | None = Field(None, description="The step with the lowest validation loss seen.")
    best_val_loss: float | None = None
    kept_step: int | None = Field(None, description="The step whose weights were saved as the output.")
    budget_left_s: float | None = Field(None, description="Time budget not spent when training stopped before it.")

    def summary(self) -> dict[str, Any]:
        """The result as train_summary.json holds it."""
        return self.model_dump(mode="json")


class Scored(_Record):
    """One model's perplexity on the validation tokens, and bits per byte / per word of the same text (absent in
    reports written before they were measured)."""

    perplexity: float
    nll: float
    tokens: int
    seconds: float | None = None
    bits_per_byte: float | None = None
    bits_per_word: float | None = None
    bytes: int | None = None


class PerplexityResult(_Record):
    base: Scored
    finetuned: Scored
    ratio: float


class CopySummary(_Record):
    samples: int
    longest_span_max: int
    longest_span_mean: float
    ngram_share_mean: float
    over_threshold: int


class OriginalityResult(_Record):
    threshold_words: int
    ngram_n: int
    corpus_sha256: str
    base: CopySummary
    finetuned: CopySummary


class StyleResult(_Record):
    reference: str
    features: list[str]
    groups: dict[str, dict[str, Any]]
    delta_reduction: float
    delta_floor: dict[str, Any] = Field(default_factory=dict)


class AttributionResult(_Record):
    author: str
    target: str
    bag_words: int
    candidates: list[dict[str, Any]]
    results: dict[str, dict[str, Any]]
    verdict: dict[str, Any] = Field(default_factory=dict)
    dropped: list[str] = Field(default_factory=list)
    reference: str | None = Field(None, description="The reference set's folder (absent in older reports).")
    names_left_out: list[str] | None = Field(None, description="Names kept out of the features (None: kept in).")
    curve: list[dict[str, Any]] | None = Field(None, description="Shares against bag size (eval.voice.bag_size_curve).")


class SceneResult(_Record):
    """Whole scenes (``eval.scenes``): per-scene measures of base, fine-tuned and the author's own text of the
    same length, their medians, the pre-registered rule and the context curves (keys: ``eval.scenes``)."""

    words: int
    scenes: int
    prompts: list[str]
    rows: dict[str, list[dict[str, Any]]]
    summary: dict[str, dict[str, Any]]
    rule: dict[str, Any] | None = None
    context_curve: dict[str, dict[str, Any]] = Field(default_factory=dict)
    timing: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Generation(_Record):
    prompt: str
    base: list[str]
    finetuned: list[str]
    base_originality: list[dict[str, Any]] | None = None
    finetuned_originality: list[dict[str, Any]] | None = None
    expect: str | None = None


class Corpus(_Record):
    author: str = "the author"
    title: str = "the corpus"


class EvalResult(_Record):
    schema_version: int = SCHEMA_VERSION
    model: str
    method: str
    corpus: Corpus = Field(default_factory=Corpus)
    perplexity: PerplexityResult
    generations: list[Generation]
    generation_seconds: dict[str, float]
    training: TrainResult | None = None
    hyperparameters: dict[str, Any]
    labels: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_LABELS))
    originality: OriginalityResult | None = None
    style: StyleResult | None = None
    attribution: AttributionResult | None = None
    attribution_skipped: str | None = None
    scenes: SceneResult | None = None
    scenes_skipped: str | None = None
    heldout_books: list[dict[str, Any]] | None = None  # eval.heldout: the author's books the run never saw
    unigram: dict[str, float] | None = None
    prompt_set: dict[str, Any] | None = None
    run_dir: str | None = None
    # What `shelley run` measured about the whole job.
    time_budget_s: float | None = None
    wall_seconds: float | None = None
    train_budget_s: float | None = None
    seconds: dict[str, float] | None = None
    data: dict[str, Any] | None = None

    @field_validator("training", mode="before")
    @classmethod
    def _no_training(cls, v: Any) -> Any:
        return v or None  # an eval of a run whose training did not finish recorded {}

    @property
    def author(self) -> str:
        return self.corpus.author

    @property
    def title(self) -> str:
        return self.corpus.title

    def to_json(self) -> dict[str, Any]:
        """The record as eval.json holds it: parts a run did not measure are left out, not null."""
        out = self.model_dump(mode="json", exclude_none=True)
        if out.get("labels") == DEFAULT_LABELS:
            del out["labels"]  # absent means the default, as earlier releases wrote it
        if self.training is not None:
            out["training"] = self.training.summary()  # its own nulls are meaningful (no best step yet)
        return out

    @classmethod
    def load(cls, path: Path) -> EvalResult:
        """eval.json, or a one-line error naming the file and what to do."""
        path = Path(path)
        again = f"run `shelley eval {path.parent}` again"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except OSError:
            raise ShelleyError(f"{path} is missing; run `shelley eval {path.parent}` first") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ShelleyError(f"{path} is not valid JSON; {again}") from None
        version = doc.get("schema_version", 1) if isinstance(doc, dict) else 1
        if version > SCHEMA_VERSION:
            raise ShelleyError(
                f"{path} was written by a newer shelley (schema {version}, this one reads {SCHEMA_VERSION}); "
                "upgrade shelley"
            )
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            where = ".".join(str(x) for x in exc.errors()[0]["loc"])
            raise ShelleyError(f"{path} has no valid {where!r}; {again}") from None
