"""Load check for ``shelley serve``: N concurrent clients against one server, every request must be answered.

    python -m bench.serve_load RUN_DIR --clients 20 [--max-tokens 24] [--concurrency 2]

Starts ``shelley serve`` on a free 127.0.0.1 port, fires the clients at once through ``gradio_client`` (the
official client), and reports answered / failed counts and latency percentiles; writes
``bench/results/serve_load.json``. Traffic stays on the loopback interface; the run is bounded by
``--timeout``.
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


def start_server(model: str, port: int, concurrency: int, max_tokens: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "shelley",
        "serve",
        model,
        "--port",
        str(port),
        "--concurrency",
        str(concurrency),
        "--set",
        f"generation.max_new_tokens={max_tokens}",
    ]
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
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("shelley serve did not start within 180 s")


def one_client(url: str, i: int, max_tokens: int) -> dict:
    from gradio_client import Client

    t0 = time.perf_counter()
    try:
        client = Client(url, verbose=False)
        text, _notes = client.predict(
            f"Client {i} opens the door, and", 0.8, 0.95, max_tokens, i, False, api_name="/generate"
        )
        ok = isinstance(text, str) and len(text) > 0
        return {"ok": ok, "seconds": time.perf_counter() - t0, "chars": len(text or ""), "error": None}
    except Exception as exc:  # every failure is counted, none stops the run
        return {"ok": False, "seconds": time.perf_counter() - t0, "chars": 0, "error": f"{type(exc).__name__}: {exc}"}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def run(model: str, clients: int, max_tokens: int, concurrency: int, timeout: float) -> dict:
    port = free_port()
    proc = start_server(model, port, concurrency, max_tokens)
    url = f"http://127.0.0.1:{port}/"
    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            futures = [pool.submit(one_client, url, i, max_tokens) for i in range(clients)]
            rows = [f.result(timeout=timeout) for f in futures]
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = [r["seconds"] for r in rows if r["ok"]]
    return {
        "model": model,
        "clients": clients,
        "server_concurrency": concurrency,
        "max_tokens": max_tokens,
        "answered": sum(r["ok"] for r in rows),
        "failed": sum(not r["ok"] for r in rows),
        "errors": sorted({r["error"] for r in rows if r["error"]}),
        "wall_seconds": round(wall, 2),
        "latency_seconds": {
            "p50": round(percentile(lat, 0.5), 2) if lat else None,
            "p90": round(percentile(lat, 0.9), 2) if lat else None,
            "p99": round(percentile(lat, 0.99), 2) if lat else None,
            "max": round(max(lat), 2) if lat else None,
            "mean": round(statistics.mean(lat), 2) if lat else None,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run dir, model dir or preset to serve")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_load.json")
    args = ap.parse_args(argv)
    result = run(args.model, args.clients, args.max_tokens, args.concurrency, args.timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lat = result["latency_seconds"]
    print(
        f"{result['answered']}/{result['clients']} answered, {result['failed']} failed in {result['wall_seconds']} s; "
        f"latency p50 {lat['p50']} s, p90 {lat['p90']} s, p99 {lat['p99']} s, max {lat['max']} s"
    )
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
