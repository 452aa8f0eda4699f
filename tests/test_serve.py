"""`shelley serve`: the Gradio demo driven in headless Chromium, its request handling, and the Space export."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from bench.serve_load import free_port

from conftest import REPO
from shelley.config import GenerationConfig


def _chromium() -> str:
    path = os.environ.get("SHELLEY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; .ci/run installs it with apt")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def server(tiny_run, shelley_home):
    """`shelley serve` on the tiny run in a child process, until the page answers."""
    port = free_port()
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [
        sys.executable,
        "-m",
        "shelley",
        "serve",
        str(tiny_run),
        "--port",
        str(port),
        "--concurrency",
        "2",
        "--set",
        "generation.max_new_tokens=24",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"shelley serve exited early: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("shelley serve did not answer within 120 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def _demo_page(server):
    """(the demo open in headless Chromium, the folder for screenshots); the browser closes afterwards."""
    from playwright.sync_api import sync_playwright

    artifacts = Path(os.environ.get("SHELLEY_ARTIFACTS") or REPO / "test-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server)
            yield page, artifacts
        finally:
            browser.close()


def test_demo_in_a_real_browser(server):
    with _demo_page(server) as (page, artifacts):
        page.locator("#prompt textarea").fill("The storm broke at midnight.")
        page.locator("#original input[type=checkbox]").uncheck()  # the streaming path (the guard path is tested below)
        page.locator("#generate").click()
        output = page.locator("#output textarea")
        page.wait_for_function(
            "() => document.querySelector('#output textarea').value.trim().length > 0", timeout=60_000
        )
        # Wait until the stream ends: the notes line reports the originality check of the finished text.
        page.wait_for_function(
            "() => document.querySelector('#notes').innerText.includes('longest copied span')", timeout=60_000
        )
        text = output.input_value()
        page.screenshot(path=str(artifacts / "serve.png"), full_page=True)
    assert len(text.strip()) > 0
    assert (artifacts / "serve.png").stat().st_size > 10_000


def test_scene_mode_in_a_real_browser(server):
    with _demo_page(server) as (page, artifacts):
        page.get_by_role("tab", name="Scene").click()
        page.locator("#scene-prompt textarea").fill("The storm broke at midnight.")
        page.locator("#scene-beats textarea").fill("Then the candle went out.")
        words = page.locator("#scene-words input[type=number]")
        words.fill("150")
        words.press("Enter")
        page.locator("#scene-write").click()
        # Streamed: progress notes while it writes, then the finished scene's figures.
        page.wait_for_function(
            "() => document.querySelector('#scene-notes').innerText.includes('tokens/s')", timeout=90_000
        )
        page.wait_for_function(
            "() => document.querySelector('#scene-notes').innerText.includes('longest copied span')", timeout=90_000
        )
        text = page.locator("#scene-output textarea").input_value()
        notes = page.locator("#scene-notes").inner_text()
        page.screenshot(path=str(artifacts / "serve-scene.png"), full_page=True)
    assert "Then the candle went out." in text and len(text.split()) >= 0.8 * 150
    assert " words in " in notes
    assert (artifacts / "serve-scene.png").stat().st_size > 10_000


def test_scene_mode_clamps_and_streams(tiny_run):
    demo = _demo(tiny_run)
    chunks = list(demo.scene("The storm", 5, "", 0.8, 0.95, 1, False))
    text, notes = chunks[-1]
    assert "clamped to 100" in notes and len(chunks) >= 2 and len(text.split()) >= 80
    assert all(t.startswith("The storm") for t, _ in chunks)  # the opening, then the scene
    assert demo.paragraph_break == "eos"  # a shelley run: end-of-text is a paragraph break


def test_port_in_use(cli, tiny_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        res = cli("serve", tiny_run, "--port", s.getsockname()[1])
    assert res.exit_code == 2 and "is in use; pass --port" in res.output


def _demo(tiny_run, **kw):
    from shelley.serve.app import load_demo

    return load_demo(str(tiny_run), GenerationConfig(max_new_tokens=12), **kw)


def test_requests_are_clamped_and_explained(tiny_run):
    demo = _demo(tiny_run)
    chunks = list(demo.generate("", 0.8, 0.95, 100_000, 1, False))
    _, notes = chunks[-1]
    assert "empty prompt" in notes and "clamped to" in notes
    assert len(chunks) >= 2  # streamed: more than the final yield
    assert demo.clamp(0) == (1, ["max tokens 0 is out of range; clamped to 1 (1 to 127)"])
    assert demo.clamp(50) == (50, [])


def test_keep_it_original_uses_the_guard(tiny_run):
    demo = _demo(tiny_run, max_span=3)
    assert demo.index is not None
    chunks = list(demo.generate("The storm", 1.0, 0.95, 16, 3, True))
    assert len(chunks) == 1 and "after" in chunks[0][1] and "draw" in chunks[0][1]


def test_a_full_queue_reaches_the_page_as_busy_try_again(tiny_run):
    import gradio as gr

    from shelley.generate.batch import BatchWriter
    from shelley.serve.app import _told

    demo = _demo(tiny_run)
    assert isinstance(demo.engine, BatchWriter)  # transformers requests are batched
    demo.engine = BatchWriter(demo.model, demo.tokenizer, max_waiting=0, start=False)
    with pytest.raises(gr.Error, match=r"busy: 0 requests ahead; try again in \d+ s"):
        list(_told(demo.generate)("The storm", 0.8, 0.95, 8, 1, False))


def test_more_readers_than_gradios_default_threads_share_one_batch(tiny_run):
    """45 readers at once (Gradio runs 40 streaming handlers by default): all 45 reach the batcher while its first
    chunk is written, so they share the next batch instead of the 41st waiting for a reader to finish."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client

    from shelley.serve.app import serve

    demo = _demo(tiny_run)
    app = serve(demo, port=free_port(), block=False)  # warms up through the request path first
    writer, release = demo.engine, threading.Event()
    run_chunk = writer._run_chunk

    def held(rows):  # the first chunk waits until every reader has asked
        release.wait(timeout=120)
        return run_chunk(rows)

    writer._run_chunk = held
    try:
        url = f"http://127.0.0.1:{app.server_port}/"
        with ThreadPoolExecutor(max_workers=45) as pool:
            clients = list(pool.map(lambda _: Client(url, verbose=False, ssl_verify=False), range(45)))
            asks = [pool.submit(c.predict, "The storm", 0.8, 0.95, 4, i, False, api_name="/generate")
                    for i, c in enumerate(clients)]  # fmt: skip
            deadline = time.time() + 90  # every reader queued or in the held chunk (the first may take one or two)
            while len(writer._waiting) + len(writer._active) < 45 and time.time() < deadline:
                time.sleep(0.2)
            queued = len(writer._waiting) + len(writer._active)
            release.set()
            texts = [a.result(timeout=120)[0] for a in asks]
    finally:
        release.set()
        app.close()
    assert queued == 45
    assert all(isinstance(t, str) and t for t in texts)
    # Those who waited went in as one batch of more than Gradio's 40 handlers (the held first chunk may have taken
    # one reader or two, as they arrived): with 40 threads no batch could pass 40.
    assert max(writer.batches) > 40, writer.batches


def test_export_space(cli, tiny_run, tmp_path):
    from huggingface_hub import SpaceCard

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    res = cli("eval", run)
    assert res.exit_code == 0, res.output
    out = tmp_path / "space"
    res = cli("serve", run, "--export-space", out, "--model-repo", "fan/frankenstein-tiny")
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert {"app.py", "README.md", "requirements.txt", "demo.json", "originality-index.npz"} <= names
    compile((out / "app.py").read_text(), "app.py", "exec")
    card = SpaceCard.load(out / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.models == ["fan/frankenstein-tiny"]
    wheel = [n for n in names if n.endswith(".whl")]
    assert wheel and f"./{wheel[0]}" in (out / "requirements.txt").read_text()
    assert cli("serve", run, "--export-space", tmp_path / "s2", "--model-repo", "bad repo!").exit_code == 2


def test_load_check_harness_answers_every_client(tiny_run):
    """The load benchmark's harness with 3 clients (the 20-client figures come from `python -m bench.serve_load`)."""
    from bench.serve_load import run

    result = run(str(tiny_run), clients=3, max_tokens=8, concurrency=None, timeout=300, scene_clients=1,
                 scene_words=100)  # fmt: skip
    assert result["answered"] == 4 and result["failed"] == 0, result["errors"]
    assert 0 < result["latency_seconds"]["p50"] <= result["latency_seconds"]["max"]
    assert result["short_tokens_per_s"] > 0 and result["scene_latency_seconds"]["max"] > 0
    assert result["connect_seconds"]["max"] > 0  # the page loads, timed apart from the requests


def test_demo_takes_no_paths_and_binds_loopback_by_default(tiny_run):
    """Security: the page has no file or path inputs, and `shelley serve` listens on 127.0.0.1 unless --host."""
    import inspect

    import gradio as gr

    from shelley.cli import serve_cmd
    from shelley.serve.app import build_app

    app = build_app(_demo(tiny_run))
    kinds = {type(b).__name__ for b in app.blocks.values()}
    assert {"Textbox", "Slider", "Number", "Checkbox", "Button"} <= kinds
    assert not any(isinstance(b, gr.File | gr.UploadButton | gr.Image | gr.FileExplorer) for b in app.blocks.values())
    host = inspect.signature(serve_cmd).parameters["host"].default
    assert host == "127.0.0.1"
