"""Download a Project Gutenberg ebook for users who are online (``shelley data fetch gutenberg 84``)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from shelley.errors import ShelleyError
from shelley.io import atomic_write_bytes, check_output_file

# SHELLEY_GUTENBERG_MIRROR points at another mirror (tests use a local server on 127.0.0.1).
DEFAULT_MIRROR = "https://www.gutenberg.org/cache/epub/{id}/pg{id}.txt"


def gutenberg_url(ebook_id: int) -> str:
    return os.environ.get("SHELLEY_GUTENBERG_MIRROR", DEFAULT_MIRROR).format(id=ebook_id)


def download_gutenberg(ebook_id: int, *, timeout: float = 30.0) -> bytes:
    """The raw bytes of ebook ``ebook_id`` from the mirror, or a one-line error."""
    if ebook_id <= 0:
        raise ShelleyError(f"ebook id must be a positive number, got {ebook_id}; e.g. 84 for Frankenstein")
    url = gutenberg_url(ebook_id)
    request = urllib.request.Request(url, headers={"User-Agent": "shelley (https://pypi.org/project/shelley)"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            data = resp.read()
    except urllib.error.HTTPError as exc:
        raise ShelleyError(f"Gutenberg answered {exc.code} for ebook {ebook_id} ({url}); check the ebook id") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ShelleyError(
            f"cannot reach Project Gutenberg ({reason}); you seem to be offline: download {url} by hand "
            "and pass its path to `shelley data build`"
        ) from None
    if not data.strip():
        raise ShelleyError(f"Gutenberg sent an empty file for ebook {ebook_id}; try again later")
    return data


def fetch_gutenberg(ebook_id: int, out: Path, *, overwrite: bool = False, timeout: float = 30.0) -> Path:
    """Download ebook ``ebook_id`` as UTF-8 text to ``out`` (written atomically)."""

    if ebook_id <= 0:
        raise ShelleyError(f"ebook id must be a positive number, got {ebook_id}; e.g. 84 for Frankenstein")
    out = Path(out)
    check_output_file(out, overwrite=overwrite)
    atomic_write_bytes(out, download_gutenberg(ebook_id, timeout=timeout))
    return out
