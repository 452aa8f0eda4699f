"""How long one whole scene takes, as a user waits for it: issue 45's speed figures in one sitting.

    python -m bench.scene_speed RUN [--engines transformers,int8,llamacpp] [--rounds 3] [--words 1000]
                                [--gguf FILE] [--out FILE] [--record]

Each round runs ``shelley write RUN PROMPT --words N --original --json`` once per engine, in its own process as a
user would, the engines alternated so that a machine whose speed drifts during the sitting (a VM's does, by
10-40 % on the 2-core machines shelley is measured on) weighs on all of them alike:

* ``transformers``: the default engine (float32 weights);
* ``int8``: the same with ``--int8``;
* ``llamacpp``: ``--engine llamacpp`` on the run's q8_0 export (``shelley export RUN --quant q8_0``; ``--gguf``
  picks another file).

Per engine it prints the scene's own seconds (from the first token asked to the last sentence end, as the
scene's JSON reports them) with min / median / max over the rounds, tokens/s, the time to the first paragraph,
the command's wall time with loading, and the guard's figures, against issue 45's targets (15 s for llama.cpp,
40 s for transformers, set on a Zen 5). ``--out`` keeps every run's figures as JSON; ``--record`` adds one row
per engine to ``docs/results/scene_speed.json`` (then ``python -m bench.results render``). Run it alone on the
machine: it times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROMPT = "It was on a dreary night of November that I beheld the accomplishment of my toils."
ENGINES = ("transformers", "int8", "llamacpp")
TARGETS = {"transformers": 40.0, "int8": 40.0, "llamacpp": 15.0}  # issue 45, seconds for 1,000 words


def q8_export(run: Path) -> Path | None:
    """The run's own q8_0 export (``Run.gguf``'s name, never the base model's), if ``shelley export`` made one."""
    from shelley.run import Run

    found = Run.find(run)
    return found.gguf("q8_0") if found is not None and found.gguf("q8_0").is_file() else None


def command(run: Path, engine: str, words: int, seed: int, gguf: Path | None) -> list[str]:
    """The ``shelley write`` command a user types for one guarded scene on ``engine``."""
    cmd = [sys.executable, "-m", "shelley", "write", str(run), PROMPT, "--words", str(words), "--original"]
    cmd += ["--json", "--seed", str(seed)]
    if engine == "int8":
        cmd.append("--int8")
    elif engine == "llamacpp":
        cmd += ["--engine", "llamacpp", "--gguf", str(gguf)]
    return cmd


def one_scene(run: Path, engine: str, words: int, seed: int, gguf: Path | None) -> dict[str, Any]:
    """One scene's figures: the scene's own timing from its JSON, and the whole command's wall time."""
    t0 = time.perf_counter()
    out = subprocess.run(command(run, engine, words, seed, gguf), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{engine}: shelley write failed ({out.returncode}): {out.stderr.strip()[-400:]}")
    scene = json.loads(out.stdout)["scene"]
    guard = scene.get("guard") or {}
    return {
        "engine": engine,
        "seconds": round(scene["seconds"], 2),
        "wall_seconds": round(wall, 2),
        "first_paragraph_s": round(scene["first_paragraph_s"], 2),
        "words": scene["words"],
        "tokens": scene["drawn_tokens"],
        "tokens_per_s": round(scene["tokens_per_s"], 2),
        "resampled": guard.get("resampled"),
        "longest_copy": guard.get("longest_span"),
    }


def summary(runs: list[dict[str, Any]], engine: str, words: int) -> dict[str, Any]:
    """Min / median / max of one engine's runs; the target verdict only for the 1,000 words it was set for."""
    mine = [r for r in runs if r["engine"] == engine]
    secs = [r["seconds"] for r in mine]
    return {
        "engine": engine,
        "runs": len(mine),
        "seconds": {"min": min(secs), "median": statistics.median(secs), "max": max(secs)},
        "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in mine),
        "first_paragraph_s_median": statistics.median(r["first_paragraph_s"] for r in mine),
        "wall_seconds_median": statistics.median(r["wall_seconds"] for r in mine),
        "target_s": TARGETS[engine] if words == 1000 else None,
        "within_target": statistics.median(secs) <= TARGETS[engine] if words == 1000 else None,
    }


def sitting(run: Path, engines: list[str], rounds: int, words: int, gguf: Path | None, seed: int = 1234) -> dict:
    """``rounds`` rounds, each running every engine once (same seed for all, a new one each round)."""
    from rich.progress import Progress

    runs: list[dict[str, Any]] = []
    began = time.strftime("%Y-%m-%d %H:%M")
    with Progress(transient=True) as bar:
        task = bar.add_task("scenes", total=rounds * len(engines))
        for r in range(rounds):
            for engine in engines:
                bar.update(task, description=f"round {r + 1}: {engine}")
                runs.append(one_scene(run, engine, words, seed + r, gguf) | {"round": r + 1})
                bar.advance(task)
    from bench.results import commit, cpu_name

    return {
        "run": str(run),
        "words": words,
        "gguf": str(gguf) if gguf else None,
        "cpu": cpu_name(),
        "commit": commit(),
        "date": began,
        "runs": runs,
        "summary": [summary(runs, e, words) for e in engines],
    }


def table(doc: dict[str, Any]) -> str:
    lines = [
        f"{doc['words']}-word scenes, guard on, {doc['run']}; {doc['cpu']}; commit {doc['commit']}",
        f"{'engine':<13}{'runs':>5}{'min s':>8}{'median s':>10}{'max s':>8}{'tok/s':>8}{'1st para':>10}"
        f"{'wall s':>8}  target",
    ]
    for s in doc["summary"]:
        sec = s["seconds"]
        verdict = "n/a (set for 1,000 words)" if s["target_s"] is None else "met" if s["within_target"] else "missed"
        target = "" if s["target_s"] is None else f"<= {s['target_s']:.0f} s: "
        lines.append(
            f"{s['engine']:<13}{s['runs']:>5}{sec['min']:>8.1f}{sec['median']:>10.1f}{sec['max']:>8.1f}"
            f"{s['tokens_per_s_median']:>8.1f}{s['first_paragraph_s_median']:>10.1f}{s['wall_seconds_median']:>8.1f}"
            f"  {target}{verdict}"
        )
    return "\n".join(lines)


def record(doc: dict[str, Any], results: Path) -> Path:
    """One row per engine in docs/results/scene_speed.json (a history: rows are only ever added)."""
    from shelley.io import atomic_write_text

    path = results / "scene_speed.json"
    history = json.loads(path.read_text())
    labels = {"transformers": "transformers (float32)", "int8": "transformers --int8", "llamacpp": "llama.cpp"}
    others = len(doc["summary"]) - 1
    for s in doc["summary"]:
        mine = [r for r in doc["runs"] if r["engine"] == s["engine"]]
        each = ", ".join(f"{r['seconds']:.1f}" for r in mine)
        gguf = f" on {Path(doc['gguf']).name}" if s["engine"] == "llamacpp" and doc["gguf"] else ""
        target = "" if s["target_s"] is None else (
            f"; issue 45's target {s['target_s']:.0f} s {'met' if s['within_target'] else 'missed'}"
        )  # fmt: skip
        history["rows"].append({
            "what": (
                f"python -m bench.scene_speed {doc['run']} (from {doc['date']}): one {doc['words']:,}-word scene, "
                f"guard on, {labels[s['engine']]}{gguf}, {s['runs']} rounds alternated with {others} other engine(s)"
            ),
            "measured": (
                f"{s['seconds']['median']:.1f} s median (runs: {each} s; min {s['seconds']['min']:.1f}, max "
                f"{s['seconds']['max']:.1f}); {s['tokens_per_s_median']:.1f} tokens/s; first paragraph after "
                f"{s['first_paragraph_s_median']:.1f} s; wall time with loading {s['wall_seconds_median']:.1f} s; "
                f"guard re-sampled {sum(r['resampled'] or 0 for r in mine)} in all, longest copy "
                f"{max(r['longest_copy'] or 0 for r in mine)} words{target}"
            ),
            "commit": doc["commit"],
            "cpu": doc["cpu"],
        })  # fmt: skip
    atomic_write_text(path, json.dumps(history, indent=1, ensure_ascii=False) + "\n")  # as the page's other files
    return path


def main(argv: list[str] | None = None) -> int:
    from bench.results import RESULTS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: " + ", ".join(ENGINES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--words", type=int, default=1000)
    ap.add_argument("--gguf", type=Path, help="the llama.cpp file (default: RUN/export/*-q8_0.gguf)")
    ap.add_argument("--out", type=Path, help="every run's figures as JSON")
    ap.add_argument("--record", action="store_true", help="add the rows to docs/results/scene_speed.json")
    ap.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        ap.error(f"unknown engine {', '.join(unknown) or '(none)'}: choose from {', '.join(ENGINES)}")
    if args.rounds < 1:
        ap.error("--rounds must be 1 or more")
    gguf = args.gguf or q8_export(args.run)
    if "llamacpp" in engines and (gguf is None or not gguf.is_file()):
        ap.error(f"no q8_0 export in {args.run / 'export'}: `shelley export {args.run} --quant q8_0`, or pass --gguf")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    doc = sitting(args.run, engines, args.rounds, args.words, gguf if "llamacpp" in engines else None)
    print(table(doc))
    if args.out:
        from shelley.io import write_json

        write_json(args.out, doc)
    if args.record:
        print(f"recorded in {record(doc, args.results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
