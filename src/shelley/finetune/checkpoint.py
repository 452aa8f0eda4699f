"""Checkpoints of the training loop: saved whole or not at all (temp dir, SHA-256 manifest, fsync, one rename),
resumed only with the config they were saved with, and the best weights kept beside them. Where each file goes
is ``Run``'s business; what goes in them is this module's."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import yaml

from shelley.config import ShelleyConfig, resumable_keys
from shelley.errors import ShelleyError
from shelley.finetune.state import TrainState, unwrap
from shelley.io import atomic_dir, atomic_write_text
from shelley.run import TRAINER_STATE, Run, write_manifest


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume(files: Run, cfg: ShelleyConfig) -> Path:
    ckpt = files.latest_checkpoint(verify=True)
    if ckpt is None:
        raise ShelleyError(
            f"--resume: {files.train_dir} has no checkpoint to resume from; drop --resume to start fresh"
        )
    newest = files.latest_checkpoint()
    if newest != ckpt:
        import warnings

        warnings.warn(f"checkpoint {newest} fails its manifest check; resuming from {ckpt}", stacklevel=2)
    saved = yaml.safe_load(files.config_file.read_text())
    old, new = _flatten(saved), _flatten(cfg.model_dump(mode="json"))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in resumable_keys())
    if changed:
        raise ShelleyError(
            f"--resume: the config differs from the checkpoint's in {', '.join(changed)}; "
            f"resume with the saved {files.config_file} or start a new run dir"
        )
    return ckpt


def _fsync(path: Path) -> None:
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk, so the rename that follows publishes data that
    survives a power cut, not just a process kill."""
    for path in [*sorted(root.rglob("*"), reverse=True), root]:
        _fsync(path)


def save_checkpoint(accelerator, files: Run, step: int, keep: int, state: dict[str, Any]) -> Path:
    """accelerate state into a temp dir, a manifest of SHA-256 hashes, fsync, then one rename: a crash never
    leaves a half checkpoint under a final name, and a damaged one is detected on resume."""
    ckpt_root = files.checkpoints_dir
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final, tmp = files.checkpoint_dir(step), files.checkpoint_dir(step, tmp=True)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2))
            write_manifest(tmp, step)
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            _fsync(ckpt_root)  # the rename itself must reach the disk
            for old in files.checkpoints()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        last = files.latest_checkpoint()
        raise ShelleyError(
            f"could not write checkpoint {final} ({exc.strerror or exc}); free disk space or point train.run_dir "
            f"at a writable disk. The previous checkpoint is intact: {last or 'none'}"
        ) from None
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(state: TrainState, ckpt: Path) -> None:
    try:
        # QLoRA: the checkpoint holds the 4-bit base with its quantization state, which plain load_state_dict does
        # not take back. The base is frozen and reloaded from model.name anyway (resume checks the config is the
        # same), so only the adapters, optimizer, scheduler and RNG need to come back: load non-strictly.
        state.accelerator.load_state(str(ckpt), strict=state.tc.method != "qlora")
    except (RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        # UnpicklingError: torch.load(weights_only=True) refused something that is not plain tensors.
        raise ShelleyError(
            f"--resume: checkpoint {ckpt} does not fit this model ({str(exc).splitlines()[0][:160]}); "
            "resume with the config the run was started with, or start a new run dir"
        ) from None
    saved = json.loads((ckpt / TRAINER_STATE).read_text())
    state.ckpt, state.start_step, state.tokens_before = ckpt, saved["step"], saved["tokens_seen"]
    state.schedule.horizon = saved.get("horizon", state.max_steps)
    state.best = saved.get("best", state.best)  # the best-so-far state travels with the checkpoint
    if state.accelerator.is_main_process:
        truncate_metrics(state.metrics_path, state.start_step)  # steps after the checkpoint are about to be redone


def trainable_state(state: TrainState) -> dict[str, Any]:
    """The weights training changes (all of them for full and scratch, the adapters for LoRA), as CPU tensors."""
    unwrapped = unwrap(state.accelerator, state.model)
    return {n: p.detach().cpu().contiguous() for n, p in unwrapped.named_parameters() if p.requires_grad}


def save_best(state: TrainState) -> None:
    from safetensors.torch import save_file

    if state.accelerator.is_main_process:
        with atomic_dir(state.files.best_dir, overwrite=True) as tmp:
            save_file(trainable_state(state), str(tmp / "weights.safetensors"))
            (tmp / "best.json").write_text(json.dumps({"step": state.best["step"], "val_loss": state.best["val_loss"]}))
    state.accelerator.wait_for_everyone()


def restore_best(state: TrainState) -> None:
    """Load the best weights back into the model (every process), so the outputs and any scoring that follows
    (``shelley run`` scores the model it holds) see them."""
    from safetensors.torch import load_file

    weights = load_file(str(state.files.best_dir / "weights.safetensors"))
    unwrapped = unwrap(state.accelerator, state.model)
    device = next(unwrapped.parameters()).device
    missing = {n for n, p in unwrapped.named_parameters() if p.requires_grad} - set(weights)
    if missing:
        raise ShelleyError(f"{state.files.best_dir} does not hold this model's weights; rerun without --resume")
    unwrapped.load_state_dict({k: v.to(device) for k, v in weights.items()}, strict=False)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to ``step``: a run killed after its last checkpoint logged steps that resume redoes."""
    if not path.exists():
        return

    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))
