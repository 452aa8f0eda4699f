"""Output helpers that never leave half-written results behind.

Everything shelley writes goes to a temporary sibling first and is renamed into place at the end, so an
interrupted or failed command leaves either the previous output or nothing, never a partial one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shelley.errors import ShelleyError


def shelley_home() -> Path:
    """shelley's cache: converted models, originality indexes, the reference set (``$SHELLEY_HOME``)."""
    return Path(os.environ.get("SHELLEY_HOME") or Path.home() / ".cache" / "shelley")


def check_output_dir(out: Path, *, overwrite: bool, flag: str = "--out") -> None:
    """Fail early, before any work, if ``out`` cannot be (re)written."""
    if out.exists() and not overwrite:
        raise ShelleyError(f"output {out} already exists; pass --overwrite to replace it or choose another {flag}")
    if out.exists() and not out.is_dir():
        raise ShelleyError(f"output {out} exists and is not a directory; choose another {flag}")
    parent = _existing_parent(out)
    if not parent.is_dir():
        raise ShelleyError(f"cannot create {out}: {parent} is not a directory; choose another {flag}")
    _probe_writable(parent, out, flag)


def check_output_file(out: Path, *, overwrite: bool, flag: str = "--out") -> None:
    if out.exists() and not overwrite:
        raise ShelleyError(f"output {out} already exists; pass --overwrite to replace it or choose another {flag}")
    if out.is_dir():
        raise ShelleyError(f"output {out} is a directory; choose a file path for {flag}")
    parent = _existing_parent(out)
    if not parent.is_dir():
        raise ShelleyError(f"cannot create {out}: {parent} is not a directory; choose another {flag}")
    _probe_writable(parent, out, flag)


def _existing_parent(path: Path) -> Path:
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent


def _probe_writable(parent: Path, out: Path, flag: str) -> None:
    # os.access lies for root and on read-only mounts; actually creating a file is the only honest test.
    try:
        fd, probe = tempfile.mkstemp(prefix=".shelley-probe-", dir=parent)
    except OSError as exc:
        raise ShelleyError(f"output location {out} is not writable ({exc.strerror}); choose another {flag}") from None
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_dir(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; on success it replaces ``out`` in one rename."""
    out = Path(out)
    check_output_dir(out, overwrite=overwrite)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.absolute().parent))
    try:
        yield tmp
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, out: Path) -> None:
    try:
        if out.exists():
            # Swap: move the old output aside, put the new one in place, then delete the old one.
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            tmp.rename(out)
    except OSError as exc:
        raise ShelleyError(f"could not write {out} ({exc.strerror}); check the path and free space") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ShelleyError(f"could not write {path} ({exc.strerror}); check the path and free space") from None


def write_png(path: Path, fig, dpi: int = 110) -> Path:
    """Save a matplotlib figure as a PNG (atomically, like every output) and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
