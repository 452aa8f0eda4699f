"""Load check for ``shelley serve``: N concurrent clients against one server, every request must be answered.

    python -m bench.serve_load RUN_DIR --clients 50 [--max-tokens 48] [--engine llamacpp] [--concurrency N]
    python -m bench.serve_load RUN_DIR --clients 45 --scene-clients 5 [--scene-words 1000]   # mixed load
    python -m bench.serve_load RUN_DIR --clients 20 --soak 600                                # memory soak

Starts ``shelley serve`` on a free 127.0.0.1 port, fires the clients at once through ``gradio_client`` (the
official client; every reader connects first, as a browser loads the page, and then all ask at once), and
reports answered / failed counts, latency percentiles from request to whole answer (short requests and scenes
apart; the page loads apart again)
and tokens a second in all; writes ``bench/results/serve_load.json``. Every short request writes exactly
``--max-tokens`` tokens (the server runs with min_new_tokens = max tokens), so tokens/s is exact. ``--soak``
keeps the clients asking for that many seconds and compares the server's RSS after the first minute with the
RSS at the end. Traffic stays on the loopback interface; the run is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: str, port: int, concurrency: int | None, max_tokens: int, engine: str = "transformers",
    gguf: str | None = None,
) -> subprocess.Popen:  # fmt: skip
    cmd = [sys.executable, "-m", "shelley", "serve", model, "--port", str(port), "--engine", engine]
    cmd += ["--gguf", gguf] if gguf else []
    cmd += ["--concurrency", str(concurrency)] if concurrency else []
    cmd += ["--set", f"generation.max_new_tokens={max_tokens}", "--set", f"generation.min_new_tokens={max_tokens}"]
    proc = subprocess.Popen(
        cmd,
        env=os.environ | {"GRADIO_ANALYTICS_ENABLED": "False"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"shelley serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise SystemExit("shelley serve did not start within 180 s")
    # Ready means answering a request, not just serving the page: the server warms its request path after the
    # page is up, and readers fired meanwhile would be timed against that warm-up instead of the batcher.
    ready = ask(connect(f"http://127.0.0.1:{port}/"), -1, max_tokens)
    if not ready["ok"]:
        proc.kill()
        raise SystemExit(f"shelley serve did not answer its first request: {ready['error']}")
    return proc


def connect(url: str) -> dict:
    """A reader opening the page: a ``gradio_client.Client`` (it fetches the app's config and API). Timed apart
    from the requests, as a browser loads the page before anyone presses Generate."""
    from gradio_client import Client

    t0 = time.perf_counter()
    try:
        # plain http on the loopback: no TLS context to build, and so no certificate bundle parsed for every
        # request (most of this load generator's CPU, which it would take from the server's cores)
        client = Client(url, verbose=False, ssl_verify=False)
        return {"client": client, "seconds": time.perf_counter() - t0, "error": None}
    except Exception as exc:  # counted as a failed request by ask()
        return {"client": None, "seconds": time.perf_counter() - t0, "error": f"{type(exc).__name__}: {exc}"}


def ask(reader: dict, i: int, max_tokens: int, scene_words: int = 0) -> dict:
    """One request from a connected reader: a continuation of ``max_tokens`` tokens, or (``scene_words``) a scene
    of that many words; its latency runs from the request to the whole answer."""
    kind = "scene" if scene_words else "short"
    t0 = time.perf_counter()
    if reader["client"] is None:
        return {"kind": kind, "ok": False, "seconds": 0.0, "chars": 0, "error": reader["error"]}
    try:
        opening = f"Client {i} opens the door, and"
        if scene_words:
            text, _notes = reader["client"].predict(
                opening, scene_words, "", 0.8, 0.95, i, False, api_name="/scene"
            )  # fmt: skip
        else:
            text, _notes = reader["client"].predict(opening, 0.8, 0.95, max_tokens, i, False, api_name="/generate")
        ok = isinstance(text, str) and len(text) > 0
        return {"kind": kind, "ok": ok, "seconds": time.perf_counter() - t0, "chars": len(text or ""), "error": None}
    except Exception as exc:  # every failure is counted, none stops the run
        error = f"{type(exc).__name__}: {exc}"
        return {"kind": kind, "ok": False, "seconds": time.perf_counter() - t0, "chars": 0, "error": error}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def latencies(rows: list[dict]) -> dict:
    lat = [r["seconds"] for r in rows if r["ok"]]
    if not lat:
        return {}
    return {
        "p50": round(percentile(lat, 0.5), 2),
        "p90": round(percentile(lat, 0.9), 2),
        "p99": round(percentile(lat, 0.99), 2),
        "max": round(max(lat), 2),
        "mean": round(statistics.mean(lat), 2),
    }


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the server and by this process (the clients)."""
    import psutil

    def used(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    return {"server": used(psutil.Process(server_pid)), "clients": used(psutil.Process())}


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def run(
    model: str, clients: int, max_tokens: int, concurrency: int | None, timeout: float, *, engine: str = "transformers",
    scene_clients: int = 0, scene_words: int = 1000, soak: float = 0, gguf: str | None = None,
) -> dict:  # fmt: skip
    port = free_port()
    proc = start_server(model, port, concurrency, max_tokens, engine, gguf)
    url = f"http://127.0.0.1:{port}/"
    memory: dict[str, float] = {}
    try:
        jobs = [(i, 0) for i in range(clients)] + [(clients + i, scene_words) for i in range(scene_clients)]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            # every reader opens the page first; then all ask at once (the page loads are not request latency)
            readers = list(pool.map(lambda _job: connect(url), jobs))
            t0, cpu0 = time.perf_counter(), cpu_seconds(proc.pid)
            if not soak:
                futures = [pool.submit(ask, r, i, max_tokens, w) for r, (i, w) in zip(readers, jobs, strict=True)]
                rows = [f.result(timeout=timeout) for f in futures]
            else:
                rows = _soak(pool, readers, max_tokens, soak, proc.pid, memory)
            wall, cpu1 = time.perf_counter() - t0, cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    short = [r for r in rows if r["kind"] == "short"]
    result = {
        "model": model,
        "engine": engine,
        "gguf": gguf,
        "clients": clients,
        "scene_clients": scene_clients,
        "scene_words": scene_words if scene_clients else None,
        "server_concurrency": concurrency,
        "max_tokens": max_tokens,
        "answered": sum(r["ok"] for r in rows),
        "requests": len(rows),
        "failed": sum(not r["ok"] for r in rows),
        "errors": sorted({r["error"] for r in rows if r["error"]}),
        "wall_seconds": round(wall, 2),
        "latency_seconds": latencies(short),
        "connect_seconds": latencies([{"ok": r["client"] is not None, "seconds": r["seconds"]} for r in readers]),
        "short_tokens_per_s": round(sum(r["ok"] for r in short) * max_tokens / wall, 1),
        # CPU seconds over the requests' wall time: the server's, and this load generator's (its clients share the
        # host's cores with the server, which a remote reader would not)
        "cpu_seconds": {k: round(cpu1[k] - cpu0[k], 1) for k in cpu0},
    }
    if scene_clients:
        result["scene_latency_seconds"] = latencies([r for r in rows if r["kind"] == "scene"])
    if memory:
        result["rss_mb"] = {k: round(v, 1) for k, v in memory.items()}
        result["rss_growth"] = round(memory["end"] / memory["after_first_minute"] - 1, 4)
    return result


def _soak(pool, readers: list[dict], max_tokens: int, seconds: float, pid: int, memory: dict) -> list[dict]:
    """The connected ``readers`` asking again as soon as they are answered, for ``seconds``; RSS after the first
    minute and at the end."""
    end = time.perf_counter() + seconds
    rows: list[dict] = []

    def keep_asking(i: int, reader: dict) -> None:
        n = 0
        while time.perf_counter() < end:
            rows.append(ask(reader, i * 1000 + n, max_tokens))
            n += 1

    futures = [pool.submit(keep_asking, i, r) for i, r in enumerate(readers)]
    time.sleep(min(60, seconds))
    memory["after_first_minute"] = rss_mb(pid)
    for f in futures:
        f.result()
    memory["end"] = rss_mb(pid)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run dir, model dir or preset to serve")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=None, help="the server's --concurrency (default: its own)")
    ap.add_argument("--engine", default="transformers", choices=["transformers", "llamacpp"])
    ap.add_argument("--gguf", default=None, help="with --engine llamacpp: the GGUF to serve (default: the run's own)")
    ap.add_argument("--scene-clients", type=int, default=0, help="also this many readers asking for a scene")
    ap.add_argument("--scene-words", type=int, default=1000)
    ap.add_argument("--soak", type=float, default=0, help="keep the clients asking for this many seconds")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_load.json")
    args = ap.parse_args(argv)
    result = run(
        args.model, args.clients, args.max_tokens, args.concurrency, args.timeout, engine=args.engine,
        scene_clients=args.scene_clients, scene_words=args.scene_words, soak=args.soak, gguf=args.gguf,
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lat = result["latency_seconds"]
    print(
        f"{result['answered']}/{result['requests']} answered, {result['failed']} failed in {result['wall_seconds']} s; "
        f"short requests p50 {lat.get('p50')} s, p90 {lat.get('p90')} s, p99 {lat.get('p99')} s, "
        f"max {lat.get('max')} s; {result['short_tokens_per_s']} tokens/s in all"
    )
    if "scene_latency_seconds" in result:
        print(f"scenes: {result['scene_latency_seconds']}")
    print(f"CPU seconds during the requests: {result['cpu_seconds']}")
    if "rss_mb" in result:
        print(f"server RSS {result['rss_mb']} MB: {100 * result['rss_growth']:+.1f}% after the first minute")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
