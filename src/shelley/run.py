"""``Run``: the one owner of a run directory's layout. Every other module asks it for a path or a record;
none builds run paths itself.

Two shapes open the same way::

    shelley train --run-dir R          shelley run --run-dir R
    R/                                 R/
      config.yaml                        data/           the cleaned, split corpus (DatasetDict + build.json)
      corpus.jsonl                       train/          everything on the left, for the training step
      metrics.jsonl, samples.jsonl       eval.json, eval.md, eval.html, attribution.png, voice-texts.json,
                                         context.png, scene-texts.json
      loss.png, train_summary.json       ab.html, ab-key.json, README.md (card), SPACE.md
      cache/         token streams
      checkpoints/step-N/  accelerate state + trainer_state.json + manifest.json (SHA-256 of every file)
      best/          the best weights seen (train.keep_best)
      model/ | adapter/   the output (a full or merged model; a PEFT adapter), with its tokenizer
      tokenizer/     scratch: the tokenizer trained at the start
      originality-index.npz
      eval.* ...     (``shelley eval R`` writes its reports beside the training files)

``root`` is the directory the user names; ``train_dir`` is where training wrote (``root`` or ``root/train``).
Reports go in ``root``. Run dirs written by earlier releases open unchanged (``tests/fixtures/run-dirs``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelley.config import ShelleyConfig
from shelley.corpus import Corpus
from shelley.errors import ShelleyError
from shelley.records import EvalResult, TrainResult

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"


@dataclass(frozen=True)
class Run:
    root: Path
    train_dir: Path

    # ------------------------------------------------------------------------------------------ opening

    @classmethod
    def for_training(cls, path: Path | str) -> Run:
        """The run dir of ``shelley train`` (training writes straight into it)."""
        return cls(Path(path), Path(path))

    @classmethod
    def for_pipeline(cls, path: Path | str) -> Run:
        """The run dir of ``shelley run``: data and training in subfolders, reports at the top."""
        return cls(Path(path), Path(path) / "train")

    @classmethod
    def find(cls, path: Path | str) -> Run | None:
        """The trained run at ``path`` (either shape), or None when ``path`` holds none."""
        path = Path(path)
        for train_dir in (path, path / "train"):
            if (train_dir / "config.yaml").is_file() and (
                (train_dir / "model").is_dir() or (train_dir / "adapter").is_dir()
            ):
                return cls(path, train_dir)
        return None

    @classmethod
    def at(cls, path: Path | str) -> Run:
        """The run at ``path`` whichever its shape, trained or not (for reports of a run being evaluated)."""
        return cls.find(path) or cls.for_training(path)

    @classmethod
    def open(cls, path: Path | str) -> Run:
        """The trained run at ``path``, or a one-line error that says what is missing."""
        path = Path(path)
        if not path.is_dir():
            raise ShelleyError(f"run dir not found: {path}; pass the --run-dir of `shelley run` or `shelley train`")
        run = cls.find(path)
        if run is not None:
            return run
        if not (path / "config.yaml").exists() and not (path / "train" / "config.yaml").exists():
            raise ShelleyError(
                f"{path} is not a shelley run dir (no config.yaml); pass the --run-dir of `shelley train` or `run`"
            )
        raise ShelleyError(f"{path} has no trained model yet (no model/ or adapter/); finish or --resume the training")

    # ------------------------------------------------------------------------------------ training files

    @property
    def config_file(self) -> Path:
        return self.train_dir / "config.yaml"

    @property
    def corpus_file(self) -> Path:
        return self.train_dir / "corpus.jsonl"

    @property
    def metrics_file(self) -> Path:
        return self.train_dir / "metrics.jsonl"

    @property
    def samples_file(self) -> Path:
        return self.train_dir / "samples.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.train_dir / "loss.png"

    @property
    def summary_file(self) -> Path:
        return self.train_dir / "train_summary.json"

    @property
    def cache_dir(self) -> Path:
        return self.train_dir / "cache"

    @property
    def checkpoints_dir(self) -> Path:
        return self.train_dir / "checkpoints"

    @property
    def best_dir(self) -> Path:
        return self.train_dir / "best"

    @property
    def model_dir(self) -> Path:
        return self.train_dir / "model"

    @property
    def adapter_dir(self) -> Path:
        return self.train_dir / "adapter"

    @property
    def tokenizer_dir(self) -> Path:
        return self.train_dir / "tokenizer"

    @property
    def originality_index(self) -> Path:
        return self.train_dir / "originality-index.npz"

    @property
    def output(self) -> Path:
        """What training saved: the full (or merged) model when there is one, else the adapter."""
        return self.model_dir if (self.model_dir / "config.json").exists() else self.adapter_dir

    # -------------------------------------------------------------------------------------- checkpoints

    def checkpoint_dir(self, step: int, *, tmp: bool = False) -> Path:
        return self.checkpoints_dir / f"{'.tmp-' if tmp else ''}step-{step:06d}"

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (state and manifest written), oldest first."""
        found = sorted(self.checkpoints_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        return [c for c in found if (c / TRAINER_STATE).exists() and (c / MANIFEST).exists()]

    def latest_checkpoint(self, *, verify: bool = False) -> Path | None:
        """The newest complete checkpoint; with ``verify`` the newest whose manifest hashes check out."""
        ckpts = [c for c in self.checkpoints() if not verify or verify_checkpoint(c)]
        return ckpts[-1] if ckpts else None

    # -------------------------------------------------------------------------------------------- data

    @property
    def data_dir(self) -> Path:
        """The dataset ``shelley run`` built (``R/data``)."""
        return self.root / "data"

    def build_report(self) -> dict[str, Any]:
        """data/build.json of the run (``shelley run``), or of a training dir's own data/; {} when neither."""
        for path in (self.data_dir / "build.json", self.train_dir / "data" / "build.json"):
            if path.is_file():
                return json.loads(path.read_text(encoding="utf-8"))
        return {}

    # ------------------------------------------------------------------------------------------ reports

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def eval_md(self) -> Path:
        return self.root / "eval.md"

    @property
    def eval_html(self) -> Path:
        return self.root / "eval.html"

    @property
    def attribution_plot(self) -> Path:
        return self.root / "attribution.png"

    @property
    def voice_texts(self) -> Path:
        """The attribution's generated texts, which ``shelley ab`` builds its page from."""
        return self.root / "voice-texts.json"

    @property
    def curve_plot(self) -> Path:
        return self.root / "bag-size-curve.png"

    @property
    def scene_texts(self) -> Path:
        """The scene test's texts (base, fine-tuned, the author's), which ``shelley ab --scenes`` pairs."""
        return self.root / "scene-texts.json"

    @property
    def context_plot(self) -> Path:
        return self.root / "context.png"

    @property
    def ab_page(self) -> Path:
        return self.root / "ab.html"

    @property
    def ab_key(self) -> Path:
        return self.root / "ab-key.json"

    @property
    def ab_scene_page(self) -> Path:
        return self.root / "ab-scenes.html"

    @property
    def ab_scene_key(self) -> Path:
        return self.root / "ab-scenes-key.json"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    def gguf(self, quant: str = "f16") -> Path:
        """The fine-tuned model's GGUF as ``shelley export`` names it (the base model's is ``base_gguf``)."""
        return self.export_dir / f"{self.root.resolve().name}-{quant}.gguf"

    def base_gguf(self, quant: str = "f16") -> Path:
        """The base model's GGUF, exported for the scene test (``export.scene_engines``)."""
        return self.export_dir / f"base-{quant}.gguf"

    @property
    def model_card(self) -> Path:
        return self.root / "README.md"

    @property
    def space_card(self) -> Path:
        return self.root / "SPACE.md"

    def results_file(self) -> Path | None:
        """The eval.json that speaks for this run: its own, or the ``shelley run`` dir's when this is its
        ``train/``; None before any eval."""
        candidates = [self.eval_json]
        if self.root == self.train_dir and self.root.name == "train":
            candidates.append(self.root.parent / "eval.json")
        return next((c for c in candidates if c.is_file()), None)

    # ------------------------------------------------------------------------------------------ records

    def config(self):
        """The run's config as training saved it."""
        import yaml

        return ShelleyConfig.model_validate(yaml.safe_load(self.config_file.read_text(encoding="utf-8")))

    def train_result(self) -> TrainResult | None:
        """What training recorded in train_summary.json (None when it did not finish)."""
        f = self.summary_file
        return TrainResult.model_validate_json(f.read_text(encoding="utf-8")) if f.is_file() else None

    def eval_result(self) -> EvalResult:
        """The run's evaluation (eval.json), or a one-line error saying how to make it."""
        return EvalResult.load(self.results_file() or self.eval_json)

    def corpus_rows(self) -> list[dict[str, Any]]:
        """The corpus training saw (``{text, split, row}`` rows), as ``train`` recorded it."""
        if not self.corpus_file.exists():
            raise ShelleyError(
                f"{self.train_dir} has no corpus.jsonl (it predates the originality guard); pass --corpus FILE"
            )
        lines = self.corpus_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def corpus(self) -> Corpus:
        """The corpus the run trained on: its texts per split (corpus.jsonl), its source, the author, title and
        prompts the run recorded, and its books (a corpus of several)."""
        cfg = self.config() if self.config_file.is_file() else None
        report = self.build_report()
        return Corpus.from_rows(
            self.corpus_rows(),
            source=(cfg.data.source if cfg else None) or report.get("source"),
            author=cfg.data.author if cfg else None,
            title=cfg.data.title if cfg else None,
            prompts=list(cfg.eval.prompts) if cfg and cfg.eval.prompts else None,
            books=report.get("books"),
        )

    def prompts(self) -> list[str]:
        """The eval prompts the run was configured with ([] when it has none)."""
        return list(self.config().eval.prompts or []) if self.config_file.is_file() else []


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(ckpt: Path, step: int) -> None:
    """Record every file of a checkpoint with its size and SHA-256 (what ``verify_checkpoint`` checks)."""
    files = {
        str(p.relative_to(ckpt)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(ckpt.rglob("*"))
        if p.is_file()
    }
    (ckpt / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=2))


def verify_checkpoint(ckpt: Path) -> bool:
    """True when every file the manifest lists is there with its size and SHA-256 (a torn or edited
    checkpoint fails)."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        return all(
            (ckpt / name).is_file()
            and (ckpt / name).stat().st_size == meta["bytes"]
            and _sha256(ckpt / name) == meta["sha256"]
            for name, meta in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False
