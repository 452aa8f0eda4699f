"""``shelley push RUN_DIR REPO``: the model (or adapter), tokenizer, card and eval report to the Hub.

The token comes from ``HF_TOKEN`` or the saved ``hf auth login``; it is handed to ``huggingface_hub`` and
nothing else: never printed, logged, or written into the card or any file. Repos are private unless
``--public``. ``--dry-run`` lists exactly what would be uploaded, with sizes, and needs no token.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shelley.errors import ShelleyError
from shelley.run import Run


@dataclass(frozen=True)
class Upload:
    path_in_repo: str
    local: Path

    @property
    def size(self) -> int:
        return self.local.stat().st_size


def check_repo_id(repo: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise ShelleyError(
            f"invalid repo name {repo!r}; use NAME or OWNER/NAME with letters, digits, '-', '_' and '.', "
            "e.g. my-user/frankenstein-smollm2"
        ) from None


def plan_upload(run: Run, card_path: Path | None, *, force: bool = False) -> list[Upload]:
    """Every file the push sends, in repo order: the model/adapter dir at the root, the card as README.md,
    the eval reports and the loss curve under ``eval/``."""
    out = run.output
    if not run.eval_json.exists() and not force:
        raise ShelleyError(
            f"{run.root} has no eval.json: run `shelley eval {run.root}` first so the card has results, "
            "or pass --force to push it unevaluated"
        )
    files = [Upload(str(p.relative_to(out)), p) for p in sorted(out.rglob("*")) if p.is_file()]
    if not files:
        raise ShelleyError(f"{out} is empty; finish or --resume the training")
    if card_path is not None:
        files.append(Upload("README.md", card_path))
    # eval.md links the attribution chart beside it
    reports = [run.eval_json, run.eval_md, run.eval_html, run.attribution_plot, run.loss_plot]
    return files + [Upload(f"eval/{p.name}", p) for p in reports if p.exists()]


def hf_token() -> str | None:
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


def push(run: Run, repo: str, *, public: bool = False, dry_run: bool = False, force: bool = False):
    """Upload the run; returns (uploads, repo url or None for a dry run)."""
    from shelley.hub.card import render_model_card

    check_repo_id(repo)
    token = None if dry_run else hf_token()
    if not dry_run and not token:
        raise ShelleyError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token), or try --dry-run"
        )
    with tempfile.TemporaryDirectory(prefix="shelley-push-") as tmp:
        card = None
        if run.eval_json.exists():
            card = Path(tmp) / "README.md"
            card.write_text(render_model_card(run, name=repo.split("/")[-1]), encoding="utf-8")
        uploads = plan_upload(run, card, force=force)
        if dry_run:
            return [(u.path_in_repo, u.size) for u in uploads], None
        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi(token=token)
        try:
            url = api.create_repo(repo, private=not public, exist_ok=True)
            api.create_commit(
                repo,
                operations=[CommitOperationAdd(u.path_in_repo, str(u.local)) for u in uploads],
                commit_message="shelley push: model, card and eval report",
            )
        except Exception as exc:  # auth, network, offline mode...: many types, one message without secrets
            raise ShelleyError(
                f"push to {repo} failed ({type(exc).__name__}: {_scrub(str(exc), token)}); "
                "check the repo name, your network and that the token can write"
            ) from None
        return [(u.path_in_repo, u.size) for u in uploads], str(url)


def _scrub(message: str, token: str | None) -> str:
    first = message.splitlines()[0][:160] if message else ""
    return first.replace(token, "***") if token else first


def push_dataset(out: Path, repo: str, *, private: bool = True, dry_run: bool = False) -> list[tuple[str, int]]:
    """Upload a built dataset folder to the Hub (private by default). Returns (path, bytes) of every file."""
    files = sorted((str(p.relative_to(out)), p.stat().st_size) for p in out.rglob("*") if p.is_file())
    if dry_run:
        return files
    from huggingface_hub import HfApi

    token = hf_token()
    if not token:
        raise ShelleyError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, or use --dry-run")
    api = HfApi(token=token)
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=repo, repo_type="dataset")
    except Exception as exc:  # network/auth errors come in many types; the message must never echo the token
        raise ShelleyError(
            f"push to {repo} failed ({type(exc).__name__}); check the repo name and your login"
        ) from None
    return files
