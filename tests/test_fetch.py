"""`shelley data fetch gutenberg` against a local mirror on 127.0.0.1 (tests never touch the internet)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import GUTENBERG
from shelley.data.ingest import read_corpus


def send_body(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    """Answer a mirror request with ``body`` (200, its length)."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _Mirror(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/84.txt":
            send_body(self, GUTENBERG.encode())
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def _serve(handler, monkeypatch):
    """Serve ``handler`` on a free loopback port and point shelley's Gutenberg mirror at it; returns the server."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SHELLEY_GUTENBERG_MIRROR", f"http://127.0.0.1:{server.server_port}/{{id}}.txt")
    return server


@pytest.fixture
def mirror(monkeypatch):
    server = _serve(_Mirror, monkeypatch)
    yield
    server.shutdown()


def test_fetch_then_ingest(cli, tmp_path, mirror):
    out = tmp_path / "pg84.txt"
    result = cli("data", "fetch", "gutenberg", "84", "--out", out)
    assert result.exit_code == 0, result.stderr
    snippets, fmt = read_corpus(out)
    assert fmt == "gutenberg" and snippets[0].text == "Letter 1"


def test_fetch_unknown_ebook(cli, tmp_path, mirror):
    result = cli("data", "fetch", "gutenberg", "999", "--out", tmp_path / "x.txt")
    assert result.exit_code == 2 and "answered 404" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_fetch_offline_is_a_clear_error(cli, tmp_path, monkeypatch):
    # A port on loopback where nothing listens: what being offline looks like, without leaving this machine.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SHELLEY_GUTENBERG_MIRROR", f"http://127.0.0.1:{port}/{{id}}.txt")
    result = cli("data", "fetch", "gutenberg", "84", "--out", tmp_path / "pg84.txt")
    assert result.exit_code == 2
    assert "offline" in result.stderr and "by hand" in result.stderr
    assert list(tmp_path.iterdir()) == []


class _BookMirror(BaseHTTPRequestHandler):
    """Serves every reference book as a tiny Gutenberg file whose header names the right title (or, for the
    ebook in ``wrong``, another title)."""

    wrong: int | None = None

    def do_GET(self):
        from shelley.data.books import BOOKS

        gid = int(self.path.strip("/").removesuffix(".txt"))
        book = next((b for b in BOOKS if b.gutenberg_id == gid), None)
        if book is None:
            self.send_error(404)
            return
        title = "Some Other Book" if gid == self.wrong else book.title
        body = (
            f"The Project Gutenberg eBook of {title}\n\nTitle: {title}\nAuthor: {book.author}\n\n"
            f"*** START OF THE PROJECT GUTENBERG EBOOK {title.upper()} ***\n\nThe text of {title}, at length.\n"
            f"*** END OF THE PROJECT GUTENBERG EBOOK {title.upper()} ***\nLicence.\n"
        ).encode()
        send_body(self, body)

    def log_message(self, *args):
        pass


@pytest.fixture
def book_mirror(monkeypatch):
    server = _serve(_BookMirror, monkeypatch)
    yield _BookMirror
    _BookMirror.wrong = None
    server.shutdown()


def test_fetch_reference_set(cli, tmp_path, book_mirror):
    import json

    from shelley.data.books import load_reference

    out = tmp_path / "reference"
    result = cli("data", "fetch", "reference", "--out", out)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert len(manifest) == 12 and {m["author"] for m in manifest} >= {"austen", "cbronte", "wilde"}
    books = load_reference(out)
    austen = next(b for b in books if b.key == "austen")
    assert austen.author == "Jane Austen" and austen.text.strip() == "The text of Pride and Prejudice, at length."
    assert "shelley" not in {m["author"] for m in manifest}  # the first corpus's author is no impostor


def test_fetch_reference_checks_each_title(cli, tmp_path, book_mirror):
    book_mirror.wrong = 1342
    out = tmp_path / "reference"
    result = cli("data", "fetch", "reference", "--out", out)
    assert result.exit_code == 2 and "not 'Pride and Prejudice'" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written
