"""The one results page: measured figures go to ``docs/results/*.json`` (one file per measurement, with the commit,
the CPU and the date) and ``docs/results.md`` is generated from them, never edited by hand.

    python -m bench.results record runs/fr --name frankenstein_default_run   # a run's eval.json -> docs/results/
    python -m bench.results record-train runs/minigpt-tiny --name scratch       # a training curve and its kept step
    python -m bench.results record-bench bench/results/train.json --name bench_two_references  # a train bench
    python -m bench.results render                                           # docs/results/*.json -> docs/results.md
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "results.md"


def cpu_name() -> str:
    """The CPU as /proc/cpuinfo names it, with its family and model (which tell AMD generations apart)."""
    import os

    from shelley.runtime import cpu_flags, cpu_info

    info = cpu_info()
    if not info:
        return platform.processor() or platform.machine()
    flags = cpu_flags()
    bf16 = "AVX512-BF16" if "avx512_bf16" in flags else ("AMX" if "amx_bf16" in flags else "no bf16 hardware")

    return (
        f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')}), "
        f"{os.cpu_count()} cores, {bf16}"
    )


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def record(run_dir: Path, name: str, note: str = "", at_commit: str | None = None) -> Path:
    """Keep the headline figures of a run's eval.json (no generated text) as docs/results/<name>.json."""
    from shelley.run import Run

    ev = Run.at(run_dir).eval_result().to_json()  # validated against the record's schema
    p = ev["perplexity"]
    tr = ev.get("training", {})
    row: dict[str, Any] = {
        "kind": "run",
        "name": name,
        "note": note,
        "commit": at_commit or commit(),
        "cpu": cpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "corpus": ev.get("corpus", {}),
        "model": ev["model"],
        "method": ev["method"],
        "time_budget_s": ev.get("time_budget_s"),
        "wall_seconds": ev.get("wall_seconds"),
        "train": {k: tr.get(k) for k in ("steps", "train_seconds", "tokens_per_second", "tokens_seen")},
        "perplexity": {"base": p["base"]["perplexity"], "finetuned": p["finetuned"]["perplexity"], "ratio": p["ratio"]},
        "bits_per_byte": {who: p[who].get("bits_per_byte") for who in ("base", "finetuned")},
    }
    if "scenes" in ev:
        sc = ev["scenes"]
        row["scenes"] = {
            "words": sc["words"],
            "scenes": sc["scenes"],
            "max_length": ev.get("hyperparameters", {}).get("max_length"),
            "summary": sc["summary"],
            "rule": sc.get("rule"),
            "context": {
                who: {k: c.get(k) for k in ("window", "windows", "band_64_128", "band_512_1024", "mean")}
                for who, c in sc.get("context_curve", {}).items()
            },
            "timing": sc.get("timing", {}),
        }
    if "attribution" in ev:
        a = ev["attribution"]
        res = a["results"]
        row["attribution"] = {
            "authors": len(a["candidates"]),
            "bag_words": a["bag_words"],
            "valid": a["validity"]["valid"],
            "own_held_out": _share(a["validity"]["own_held_out"]),
            "impostor_max_share": a["validity"]["impostor_max_share"],
            "impostor_max_author": a["validity"]["impostor_max_author"],
            **{who: _share(r) for who, r in res.items()},
            "verdict": a.get("verdict"),
            "generation": a.get("generation"),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(row, indent=2) + "\n")
    return out


def record_training(run_dir: Path, name: str, note: str = "", at_commit: str | None = None) -> Path:
    """Keep a `shelley train` run's validation curve, kept step and stop reason as docs/results/<name>.json."""
    from shelley.run import Run

    run = Run.for_training(run_dir)
    summary = run.train_result().summary()
    rows = [json.loads(x) for x in run.metrics_file.read_text().splitlines() if x.strip()]
    curve = [[r["step"], round(r["val_perplexity"], 2)] for r in rows if r.get("kind") == "eval"]
    row = {
        "kind": "training",
        "name": name,
        "note": note,
        "commit": at_commit or commit(),
        "cpu": cpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "curve": curve,
        **{
            k: summary.get(k)
            for k in ("steps", "epochs", "stop_reason", "kept_step", "best_step", "budget_left_s", "tokens_per_second")
        },
        "train_seconds": round(summary.get("train_seconds", 0.0), 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(row, indent=2) + "\n")
    return out


def _render_training(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Training curves and the kept model",
        "",
        "| run | steps (passes) | stopped by | validation perplexity by step | kept step (perplexity) | seconds | "
        "commit, CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        curve = ", ".join(f"{st}: {ppl}" for st, ppl in r["curve"])
        kept = dict((st, ppl) for st, ppl in r["curve"]).get(r["kept_step"], "not validated")
        left = f", {r['budget_left_s']:.0f} s of the budget left" if r.get("budget_left_s") else ""
        lines.append(
            f"| {r['name']} | {r['steps']} ({r['epochs']}) | {r['stop_reason']}{left} | {curve} | {r['kept_step']} "
            f"({kept}) | {r['train_seconds']} | {r['commit']}, {r['cpu']} |"
        )
    return lines


def _share(r: dict[str, Any]) -> dict[str, Any]:
    return {"bags": r["bags"], "target_bags": r["target_bags"], "share": r["target_share"], "interval": r["interval"]}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _bags(s: dict[str, Any]) -> str:
    lo, hi = s["interval"]
    return f"{s['target_bags']}/{s['bags']} = {_pct(s['share'])} ({_pct(lo)}–{_pct(hi)})"


def record_export(figures: dict[str, Any], name: str, note: str = "", at_commit: str | None = None) -> Path:
    """Keep what bench.export_check measured as docs/results/<name>.json."""
    row = {"kind": "export", "name": name, "note": note, "commit": at_commit or commit(), "cpu": cpu_name()}
    row |= {"date": time.strftime("%Y-%m-%d")} | figures
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(row, indent=1) + "\n")
    return path


def record_heldout(run_dirs: list[Path], name: str, note: str = "", at_commit: str | None = None) -> Path:
    """Keep the author's-unseen-book figures (``shelley eval RUN --heldout-book FILE``) of several runs, side by
    side, as docs/results/<name>.json."""
    from shelley.run import Run

    rows = []
    for d in run_dirs:
        run = Run.at(d)
        ev, cfg = run.eval_result(), run.config()
        tr = ev.training
        for b in ev.heldout_books or []:
            rows.append({
                "run": Path(d).name, "method": cfg.train.method, "trained_on": ev.corpus.title,
                "steps": tr.steps if tr else None, "passes": tr.epochs if tr else None, "book": b["title"],
                "window": b["window"], "windows": b["windows"], "base": b["bands"]["base"],
                "finetuned": b["bands"]["finetuned"], "better_everywhere": b["better_everywhere"],
            })  # fmt: skip
    doc = {"kind": "heldout", "name": name, "note": note, "commit": at_commit or commit(), "cpu": cpu_name()}
    doc |= {"date": time.strftime("%Y-%m-%d"), "rows": rows}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def _render_heldout(doc: dict[str, Any]) -> list[str]:
    rows = doc["rows"]
    if not rows:
        return []
    bands = [b for b in rows[0]["base"] if b != "all"]
    lines = ["", f"## Author, not book: loss on the author's unseen books ({doc['name']})", "", doc.get("note", ""), ""]
    lines += [
        "Mean loss (nats/token) by token position in 1,024-token windows of a book by the corpus's author that the "
        "run never trained on; each cell is fine-tuned − base (negative: the fine-tuned model is better there).",
        "",
        "| run (method) | trained on | steps (passes) | unseen book | base, all | fine-tuned, all | "
        + " | ".join(f"{b}" for b in bands)
        + " | better at every position |",
        "|---|---|---|---|---|---|" + "---|" * len(bands) + "---|",
    ]
    for r in rows:
        diffs = [f"{r['finetuned'][b] - r['base'][b]:+.3f}" for b in bands]
        passes = f" ({r['passes']:.2f})" if r.get("passes") else ""
        lines.append(
            f"| {r['run']} ({r['method']}) | {r['trained_on']} | {r['steps']}{passes} | {r['book']} | "
            f"{r['base']['all']:.3f} | {r['finetuned']['all']:.3f} | "
            + " | ".join(diffs)
            + f" | {'yes' if r['better_everywhere'] else 'no'} |"
        )
    lines += ["", f"Commit {doc['commit']}, {doc['date']}, {doc['cpu']}."]
    return lines


def _render_same_chapters(doc: dict[str, Any]) -> list[str]:
    s = doc["scores"]
    one, many = doc["one_book"], doc["many_books"]
    lines = ["", f"## What more books bought, on one book's own held-out chapters ({doc['name']})", ""]
    lines += [
        f"Both runs scored on the same {doc['held_out_rows']} held-out rows of `{Path(doc['book']).name}` (each "
        "book is split on its own, so its held-out chapters are the same in both corpora).",
        "",
        "| model | perplexity | bits per byte | steps (passes) | attribution: fine-tuned bags to the author |",
        "|---|---|---|---|---|",
    ]
    for key, label, run in (("base", "base", None), ("one_book", "one book", one), ("many_books", "all books", many)):
        sc = s[key]
        bpb = f"{sc['bits_per_byte']:.3f}" if sc.get("bits_per_byte") is not None else "—"
        steps = f"{run['steps']} ({run['passes']:.2f})" if run and run.get("passes") else "—"
        att = (run or {}).get("attribution") or {}
        share = (att.get("shares") or {}).get("finetuned")
        verdict = f"{100 * share:.0f}% ({'PASS' if att.get('passed') else 'FAIL'})" if share is not None else "—"
        lines.append(f"| {label} | {sc['perplexity']:.2f} | {bpb} | {steps} | {verdict} |")
    lines += ["", f"Commit {doc['commit']}, {doc['date']}, {doc['cpu']}."]
    return lines


def record_bench(train_json: Path, name: str, note: str = "") -> Path:
    """Keep a train bench's table (``python -m bench``'s train.json) as docs/results/<name>.json: one row per
    contestant with its tokens/s, share of the limit, multiples, final perplexity and time to the target."""
    doc = json.loads(train_json.read_text())
    train = doc["train"]
    target = train.get("target_perplexity", 36)
    peak = f"fp32 matmul peak {train['matmul_peak']['gflops']:.0f} GFLOP/s"
    if train.get("matmul_peak_bf16"):
        peak += f", bf16 {train['matmul_peak_bf16']['gflops']:.0f}"
    rows = []
    for impl, r in train["contestants"].items():
        reached = r.get("seconds_to_target_perplexity")
        measured = (
            f"{r['precision']}, {r['steps']} steps, {r['tokens_per_second']:.1f} real tokens/s = "
            f"{r['fraction_of_limit']:.1%} of its limit ({r['limit_tokens_per_s']:.0f})"
            + (
                f", {r['fraction_of_own_limit']:.1%} of the limit its own process measured "
                f"({r['own_limit_tokens_per_s']:.0f}; peak {r['own_peak']['before']:.0f} before, "
                f"{r['own_peak']['after']:.0f} after)"
                if "fraction_of_own_limit" in r
                else ""
            )
            + f"; {r.get('speedup_tokens_per_s', 1.0):.2f}x the stock recipe"
            + (f", {r['speedup_vs_trl']:.2f}x TRL" if "speedup_vs_trl" in r else "")
            + f"; perplexity {r['val_perplexity']:.2f}; "
            + (f"perplexity {target:g} after {reached:.1f} s" if reached is not None else f"did not reach {target:g}")
            + f"; peak RSS {r['peak_rss_mb']:.0f} MB"
        )
        rows.append({"what": impl, "measured": measured, "commit": doc["commit"], "cpu": cpu_name()})
    out = {
        "kind": "history",
        "name": name,
        "title": f"Train bench against both references (`python -m bench`), {peak}",
        "note": note,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    return path


def _render_export(r: dict[str, Any]) -> list[str]:
    ppl, agree, e = r["perplexity"], r["top1_agreement_vs_saved"], r["engines"]
    lines = ["", f"## Local runtimes: {r['name']}", "", f"{r.get('note', '')} (commit {r['commit']}, {r['cpu']}).", ""]
    lines += ["| file | size | perplexity in llama.cpp | top-1 agreement with the saved model |", "|---|---|---|---|"]
    for q in ("f16", "q8_0", "q4_k_m"):
        p = ppl[f"{q} (llama.cpp)"]
        lines.append(f"| {q} | {r['sizes_mb'][q]} MB | {p:.3f} | {100 * agree[q]:.2f}% |")
    lines += [
        "",
        f"- Saved model in transformers, same {r['tokens_scored']} tokens: perplexity "
        f"{ppl['saved (transformers)']:.3f}.",
        f"- f16 file loaded by transformers: largest logit difference {r['transformers_f16_max_logit_diff']:.2e}.",
        f"- Greedy 50-token continuations of the eval prompts, llama.cpp (f16) vs transformers: "
        f"{r['greedy_50_tokens_identical']} identical.",
    ]
    lines += [
        "",
        "| engine | eval workload: 5 prompts x 4 samples x 120 tokens | one stream, 120 tokens | first token |",
        "|---|---|---|---|",
    ]
    for name, x in e.items():
        workload = f"{x['tokens_per_s']} tokens/s ({x['tokens']} tokens in {x['seconds']} s)"
        one = x.get("single_stream_tokens_per_s", "—")
        lines.append(f"| {name} | {workload} | {one} tokens/s | {x['first_token_s']} s |")
    return lines


def render(folder: Path = RESULTS) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    runs = [r for r in rows if r.get("kind") == "run"]
    lines = [
        "# Measured results",
        "",
        "Generated by `python -m bench.results render` from `docs/results/*.json`; do not edit by hand. Each row",
        "names the commit and the CPU it was measured on: compare speeds only within one machine and one sitting.",
        "",
        "## `shelley run`: perplexity and who wrote this",
        "",
        "| run | corpus | model (method) | budget | steps, tokens/s | validation perplexity (bits per byte) base →"
        " fine-tuned |"
        " attribution validity (own held-out; worst impostor) | fine-tuned bags to the author | base bags |"
        " held-out bags | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        c = r.get("corpus", {})
        t = r["train"]
        p = r["perplexity"]
        a = r.get("attribution")
        if a:
            v = a.get("verdict") or {}
            verdict = ("PASS" if v.get("passed") else "FAIL") + (f", Fisher p = {v['fisher_p']:.2g}" if v else "")
            attr = [
                f"{'valid' if a['valid'] else 'NOT valid'}: {_bags(a['own_held_out'])}; "
                f"{_pct(a['impostor_max_share'])} ({a['impostor_max_author']})",
                _bags(a["finetuned"]),
                _bags(a["base"]),
                _bags(a["held_out"]),
                verdict,
            ]
        else:
            attr = ["—"] * 5
        budget = f"{r['time_budget_s']:.0f} s" if r.get("time_budget_s") else "—"
        cells = [
            r["name"],
            f"*{c.get('title', '?')}* ({c.get('author', '?')})",
            f"{r['model']} ({r['method']})",
            budget,
            f"{t.get('steps')}, {t.get('tokens_per_second') or 0:.0f}",
            f"{p['base']:.2f} → {p['finetuned']:.2f} (×{p['ratio']:.3f})" + _bpb(r.get("bits_per_byte")),
            *attr,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| run | commit | date | CPU | generation for attribution | note |", "|---|---|---|---|---|---|"]
    for r in runs:
        gen = (r.get("attribution") or {}).get("generation") or {}
        g = "; ".join(f"{k}: {v['words']} words in {v['seconds']:.0f} s" for k, v in gen.items()) or "—"
        lines.append(f"| {r['name']} | {r['commit']} | {r['date']} | {r['cpu']} | {g} | {r.get('note', '')} |")
    scened = [r for r in runs if r.get("scenes")]
    if scened:
        lines += _render_scenes(scened)
    training = [r for r in rows if r.get("kind") == "training"]
    if training:
        lines += _render_training(training)
    for doc in (r for r in rows if r.get("kind") == "export"):
        lines += _render_export(doc)
    for doc in (r for r in rows if r.get("kind") == "choices"):
        lines += _render_choices(doc)
    for doc in (r for r in rows if r.get("kind") == "same_chapters"):
        lines += _render_same_chapters(doc)
    for doc in (r for r in rows if r.get("kind") == "heldout"):
        lines += _render_heldout(doc)
    for doc in (r for r in rows if r.get("kind") == "history"):
        title = doc.get("title", "Earlier measurements")
        lines += ["", f"## {title}", "", doc.get("note", ""), "", "| what | measured | commit, CPU |"]
        lines.append("|---|---|---|")
        lines += [f"| {r['what']} | {r['measured']} | {r['commit']}, {r['cpu']} |" for r in doc["rows"]]
    return "\n".join(lines) + "\n"


def _bpb(b: dict[str, Any] | None) -> str:
    """Bits per byte base → fine-tuned, where the run measured them."""
    if not b or b.get("base") is None:
        return ""
    return f"; {b['base']:.3f} → {b['finetuned']:.3f} bits/byte"


def _render_scenes(runs: list[dict[str, Any]]) -> list[str]:
    """The scene test of each run that has one: medians per group, the rule, the context curve's bands."""
    lines = [
        "",
        "## Whole scenes",
        "",
        "`shelley eval RUN --scenes N --words W`: medians over the scenes of each model and over the author's "
        "held-out passages of the same length; the rule is issue 45's, fixed before any scene was written. "
        "Context: mean loss (nats/token) at positions 64–128 → 512–1,024 of 1,024-token held-out windows.",
        "",
        "| run | trained window | scenes | text | repeated 4-grams | distinct-2 | gzip | longest self-repeat | loops "
        "| longest copy | names per 1k | to the author | context 64–128 → 512–1,024 | writing |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        sc = r["scenes"]
        rule = sc.get("rule")
        verdict = "—" if not rule else ("PASS" if rule["pass"] else "FAIL: " + ", ".join(
            k.replace("_", " ") for k, ok in rule["checks"].items() if not ok))  # fmt: skip
        for who, s in sc["summary"].items():
            if not s.get("texts"):
                continue
            c = sc["context"].get(who) or {}
            ctx = (f"{c['band_64_128']:.3f} → {c['band_512_1024']:.3f}" if c.get("band_512_1024") is not None
                   else "—")  # fmt: skip
            t = sc["timing"].get(who) or {}
            speed = f"{t['tokens_per_s']} tokens/s" if t.get("tokens_per_s") else "—"
            cells = [
                f"{r['name']} ({verdict})" if who == "finetuned" else r["name"],
                str(sc.get("max_length") or "—"),
                f"{s['texts']} × {sc['words']} words",
                who,
                f"{100 * s['median_repeated_4gram_share']:.2f}%",
                f"{s['median_distinct_2']:.3f}",
                f"{s['median_gzip_ratio']:.3f}",
                f"{s['median_longest_self_repeat']:.0f}",
                str(s["loops"]),
                str(s.get("max_longest_copied", "—")),
                f"{s.get('median_names_per_1000', 0):.1f}",
                f"{s['to_author']}/{s['texts']}" if "to_author" in s else "—",
                ctx,
                speed,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _render_choices(doc: dict[str, Any]) -> list[str]:
    """What each preset value was chosen against, and the measurement that chose it."""
    lines = ["", "## Why the presets hold these values", "", doc.get("note", ""), ""]
    lines += ["| preset | key | chosen | against | measured | commit, CPU |", "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        cells = [r["preset"], f"`{r['key']}`", r["chosen"], r["against"], r["measured"], f"{r['commit']}, {r['cpu']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="keep a run's figures in docs/results/NAME.json")
    rec.add_argument("run", type=Path)
    rec.add_argument("--name", required=True)
    rec.add_argument("--note", default="")
    rec.add_argument("--commit", default=None, help="the commit the run was made with (default: HEAD)")
    trn = sub.add_parser("record-train", help="keep a `shelley train` run's curve in docs/results/NAME.json")
    trn.add_argument("run", type=Path)
    trn.add_argument("--name", required=True)
    trn.add_argument("--note", default="")
    trn.add_argument("--commit", default=None)
    bench = sub.add_parser("record-bench", help="keep a train bench's table (bench/results/train.json)")
    bench.add_argument("train_json", type=Path)
    bench.add_argument("--name", required=True)
    bench.add_argument("--note", default="")
    held = sub.add_parser("record-heldout", help="keep several runs' unseen-book figures in docs/results/NAME.json")
    held.add_argument("runs", type=Path, nargs="+")
    held.add_argument("--name", required=True)
    held.add_argument("--note", default="")
    held.add_argument("--commit", default=None)
    sub.add_parser("render", help="write docs/results.md from docs/results/*.json")
    args = ap.parse_args()
    if args.cmd == "record":
        print("wrote", record(args.run, args.name, args.note, args.commit))
    elif args.cmd == "record-bench":
        print("wrote", record_bench(args.train_json, args.name, args.note))
    elif args.cmd == "record-heldout":
        print("wrote", record_heldout(args.runs, args.name, args.note, args.commit))
    elif args.cmd == "record-train":
        print("wrote", record_training(args.run, args.name, args.note, args.commit))
    PAGE.write_text(render())
    print("wrote", PAGE)


if __name__ == "__main__":
    main()
