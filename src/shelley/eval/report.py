"""``shelley eval RUN_DIR``: base vs fine-tuned perplexity on the same validation tokens, side-by-side
generations with the same seeds and settings, timing and hyperparameters -> eval.json and eval.md."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from shelley.config import ShelleyConfig
from shelley.errors import ShelleyError


def load_run(run_dir: Path) -> tuple[ShelleyConfig, Path, Path]:
    """(config, model-or-adapter dir, training run dir) of a ``shelley train`` or ``shelley run`` directory."""
    from shelley.generate.load import find_train_run, run_output

    run_dir = Path(run_dir)
    train_dir = find_train_run(run_dir)
    if train_dir is None:
        if not (run_dir / "config.yaml").exists() and not (run_dir / "train" / "config.yaml").exists():
            raise ShelleyError(
                f"{run_dir} is not a shelley run dir (no config.yaml); pass the --run-dir of `shelley train` or `run`"
            )
        raise ShelleyError(
            f"{run_dir} has no trained model yet (no model/ or adapter/); finish or --resume the training"
        )
    cfg = ShelleyConfig.model_validate(yaml.safe_load((train_dir / "config.yaml").read_text()))
    return cfg, run_output(train_dir), train_dir


def cached_stream(run_dir: Path, split: str = "validation") -> np.ndarray:
    """The token stream of ``split`` that training cached in ``run_dir/cache``."""
    cached = sorted((run_dir / "cache").glob(f"{split}-*.npy"))
    if not cached:
        raise ShelleyError(f"{run_dir} has no cached {split} tokens; re-run `shelley train`")
    return np.load(cached[-1], mmap_mode="r")


def score_model(model, tokenizer, stream: np.ndarray, cfg: ShelleyConfig) -> dict[str, Any]:
    """Perplexity on ``stream`` and generations for the eval prompts (fixed seed), each timed."""
    from shelley.generate import generate_texts
    from shelley.models.perplexity import perplexity

    t0 = time.perf_counter()
    ppl = perplexity(
        model,
        stream,
        max_length=cfg.model.max_length,
        stride=cfg.eval.stride,
        batch_size=cfg.train.micro_batch_size,
        max_tokens=cfg.eval.max_eval_tokens,
    )
    ppl["seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    gen = cfg.generation.model_copy(update={"num_samples": cfg.eval.samples_per_prompt})
    if cfg.eval.full_length:
        gen.min_new_tokens = gen.max_new_tokens
    texts = generate_texts(model, tokenizer, cfg.eval.prompts, gen)  # same seed and settings for every model
    return {"perplexity": ppl, "generations": texts, "generation_seconds": round(time.perf_counter() - t0, 2)}


def combine(
    cfg: ShelleyConfig, base: dict[str, Any], tuned: dict[str, Any], training: dict[str, Any]
) -> dict[str, Any]:
    """The report's core: perplexity, the side-by-side generations, training figures and the corpus's author."""
    n = cfg.eval.samples_per_prompt
    ppl = {"base": base["perplexity"], "finetuned": tuned["perplexity"]}
    ppl["ratio"] = ppl["finetuned"]["perplexity"] / ppl["base"]["perplexity"]
    return {
        "model": cfg.model.name,
        "method": cfg.train.method,
        "corpus": {"author": cfg.data.author or "the author", "title": cfg.data.title or "the corpus"},
        "perplexity": ppl,
        "generations": [
            {
                "prompt": p,
                "base": base["generations"][i * n : (i + 1) * n],
                "finetuned": tuned["generations"][i * n : (i + 1) * n],
            }
            for i, p in enumerate(cfg.eval.prompts)
        ],
        "generation_seconds": {"base": base["generation_seconds"], "finetuned": tuned["generation_seconds"]},
        "training": training,
        "hyperparameters": cfg.model_dump(mode="json")["train"] | {"max_length": cfg.model.max_length},
    }


def judge(results: dict[str, Any], train_dir: Path, cfg: ShelleyConfig) -> dict[str, Any]:
    """Add originality (copied spans against the run's corpus) and stylometry (base vs fine-tuned vs real
    Shelley, Delta to the held-out text) to ``results`` built by ``combine``."""
    from shelley.eval.originality import run_corpus_rows, run_index
    from shelley.eval.style import StyleModel, compare, delta_floor, window_spans, words

    rows = run_corpus_rows(train_dir)
    index = run_index(train_dir)
    train_texts = [r["text"] for r in rows if r["split"] == "train"]
    held_out = [r["text"] for r in rows if r["split"] == "validation"]
    limit = cfg.eval.max_copied_span
    for g in results["generations"]:
        for who in ("base", "finetuned"):
            g[f"{who}_originality"] = [index.check(t) for t in g[who]]
    summary = {}
    for who in ("base", "finetuned"):
        checks = [c for g in results["generations"] for c in g[f"{who}_originality"]]
        summary[who] = {
            "samples": len(checks),
            "longest_span_max": max((c["longest_span"] for c in checks), default=0),
            "longest_span_mean": sum(c["longest_span"] for c in checks) / max(1, len(checks)),
            "ngram_share_mean": sum(c["ngram_share"] for c in checks) / max(1, len(checks)),
            "over_threshold": sum(c["longest_span"] > limit for c in checks),
        }
    results["originality"] = {"threshold_words": limit, "ngram_n": 8, "corpus_sha256": index.sha256} | summary

    style = StyleModel.fit(train_texts, n_features=cfg.eval.style_features)
    groups = {who: [t for g in results["generations"] for t in g[who]] for who in ("base", "finetuned")}
    # Real Shelley text as long as the generations: how close a perfect imitator of the book would get.
    target = len(words(" ".join(groups["finetuned"])))
    first = window_spans(train_texts, target, k=1)  # the opening of the train split; all of it if shorter
    groups["author_train_sample"] = train_texts[slice(*first[0])] if first else train_texts
    groups["held_out"] = held_out
    table = compare(style, groups, reference="held_out")
    base_d, ft_d = table["base"]["delta"], table["finetuned"]["delta"]
    floor = delta_floor(style, train_texts, "\n".join(held_out), target)
    if floor["windows"] and base_d:
        # What share of the author's own same-length windows would pass "Delta at least 30% below the base model":
        # when that share is small, the sample is too short for Delta to tell a perfect imitator from the base.
        floor["share_below_70pct_of_base"] = float(np.mean([v <= 0.7 * base_d for v in floor["values"]]))
    results["style"] = {
        "reference": f"held-out validation text of {cfg.data.title or 'the corpus'}",
        "features": style.features,
        "groups": table,
        "delta_reduction": (base_d - ft_d) / base_d if base_d else 0.0,
        "delta_floor": floor,
    }
    return results


def corpus_source(cfg: ShelleyConfig, train_dir: Path) -> str | None:
    """The corpus file a run was built from: data.source, else what its build report recorded."""
    from shelley.data.build import build_source

    return cfg.data.source or build_source(train_dir.parent / "data") or build_source(train_dir / "data")


def evaluate_run(
    run_dir: Path,
    prompts: tuple[str, list] | None = None,
    *,
    attribution_bags: int | None = None,
    reference_dir: str | None = None,
    bag_words: int | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a finished ``shelley train`` (or ``shelley run``) dir: base and trained models on the run's
    validation tokens, then originality and style of their generations.

    ``prompts`` is ``(name, [Prompt, ...])`` from ``eval.prompts.load_prompts`` and replaces ``eval.prompts``
    (an empty list keeps the run's own prompts). For a scratch run the "base" is the same GPT before training
    (same seed), and the report adds the unigram baselines of its tokenizer on the same validation tokens.
    ``attribution_bags`` adds the who-wrote-this test on that many bags of text from each model;
    ``on_progress(model, words, words_needed)`` follows its generation.
    """
    from shelley.data.books import describe_corpus
    from shelley.eval.originality import run_corpus_rows
    from shelley.generate.load import load_model_dir

    cfg, out, train_dir = load_run(Path(run_dir))
    if bag_words:
        cfg.eval.bag_words = bag_words
    rows = run_corpus_rows(train_dir)
    train_texts = [r["text"] for r in rows if r["split"] == "train"]
    val_texts = [r["text"] for r in rows if r["split"] == "validation"]
    who = describe_corpus(cfg, corpus_source(cfg, train_dir), val_texts)
    if prompts is not None and prompts[1]:
        cfg.eval.prompts = [p.prompt for p in prompts[1]]
    voice = None
    if attribution_bags:
        from shelley.eval.voice import build_attribution_test

        # Before any generation: a missing reference set must fail in a second, not after minutes of sampling.
        voice = build_attribution_test(
            who, train_texts, val_texts, reference_dir or cfg.eval.reference_dir, bag_words=cfg.eval.bag_words
        )
    stream = cached_stream(train_dir)
    base_model, tokenizer = _base_for_eval(cfg, out)
    base = score_model(base_model, tokenizer, stream, cfg)
    written = {}
    if voice:
        written["base"] = voice_text(base_model, tokenizer, cfg, attribution_bags, "base", on_progress)
    del base_model
    tuned_model = load_model_dir(out, trust_remote_code=cfg.model.trust_remote_code)
    tuned = score_model(tuned_model, tokenizer, stream, cfg)
    if voice:
        written["finetuned"] = voice_text(tuned_model, tokenizer, cfg, attribution_bags, "finetuned", on_progress)
    summary = train_dir / "train_summary.json"
    training = json.loads(summary.read_text()) if summary.exists() else {}
    results = combine(cfg, base, tuned, training) | {"run_dir": str(run_dir)}
    if cfg.train.method == "scratch":
        from shelley.models.perplexity import unigram_baselines

        results["labels"] = {"base": "untrained (random init)", "finetuned": "trained from scratch"}
        val = stream if cfg.eval.max_eval_tokens is None else stream[: cfg.eval.max_eval_tokens + 1]
        results["unigram"] = unigram_baselines(cached_stream(train_dir, "train"), val, len(tokenizer))
    if prompts is not None:
        from shelley.eval.prompts import score_expectations

        checked = score_expectations(results, prompts[1]) if prompts[1] else {}
        results["prompt_set"] = {"name": prompts[0]} | checked
    results = judge(results, train_dir, cfg)
    if voice:
        results["attribution"] = attribution_results(voice, written, val_texts, attribution_bags)
    return results


def voice_text(model, tokenizer, cfg: ShelleyConfig, bags: int, who: str, on_progress=None) -> dict[str, Any]:
    """Enough of ``model``'s text for ``bags`` attribution bags (the eval prompts, sampled as in the report)."""
    from shelley.eval.voice import generate_for_bags

    def on_round(done: int, total: int) -> None:
        if on_progress:
            on_progress(who, done, total)

    return generate_for_bags(
        model, tokenizer, cfg.eval.prompts, cfg.generation, bags * cfg.eval.bag_words, on_round=on_round
    )


def attribution_results(voice, written: dict[str, dict], held_out: list[str], bags: int) -> dict[str, Any]:
    """The attribution block of the report; the generated texts ride along under ``texts`` for `shelley ab`
    (``write_eval`` stores them in their own file, not in eval.json)."""
    from shelley.eval.voice import judge_voice

    out = judge_voice(voice, {k: v["text"] for k, v in written.items()}, bags)
    out["generation"] = {
        k: {kk: v[kk] for kk in ("samples", "words")} | {"seconds": round(v["seconds"], 1)} for k, v in written.items()
    }
    out["texts"] = {k: v["text"] for k, v in written.items()} | {"held_out": "\n".join(held_out)}
    return out


def _base_for_eval(cfg: ShelleyConfig, out: Path):
    """(base model, tokenizer): the pretrained base for fine-tunes; for scratch runs the run's own tokenizer and
    the GPT as it was before its first step (the loop seeds the initialisation with train.seed)."""
    if cfg.train.method != "scratch":
        from shelley.finetune.methods import load_base_model, load_tokenizer_for_training

        return load_base_model(cfg, for_training=False), load_tokenizer_for_training(cfg)
    import torch

    from shelley.gpt.model import GPT
    from shelley.gpt.setup import export_hf, gpt_config, load_gpt_tokenizer

    tokenizer = load_gpt_tokenizer(out)
    torch.manual_seed(cfg.train.seed)
    return export_hf(GPT(gpt_config(cfg, len(tokenizer))), tokenizer), tokenizer


def author_of(r: dict[str, Any]) -> str:
    return (r.get("corpus") or {}).get("author") or "the author"


def style_labels(r: dict[str, Any]) -> dict[str, str]:
    """Row labels of the style table, naming the corpus's own author (older reports: shelley_train_sample)."""
    a = author_of(r)
    labels = {
        "base": "base model",
        "finetuned": "fine-tuned model",
        "author_train_sample": f"{a} (train, same length)",
        "shelley_train_sample": f"{a} (train, same length)",
        "held_out": f"{a} (held out, reference)",
    }
    groups = (r.get("style") or {}).get("groups", {})
    return {k: v for k, v in labels.items() if k in groups}


def style_sentences(r: dict[str, Any]) -> list[str]:
    """What the Delta figures say, with the sign of the change spelled out and the noise floor beside it."""
    st = r["style"]
    change = st["delta_reduction"]
    verb = "lowered" if change >= 0 else "raised"
    out = [
        f"Burrows' Delta to the held-out text over the corpus's {len(st['features'])} most frequent function words "
        f"(lower is closer; a secondary measure, noisy at this length). Fine-tuning {verb} Delta by "
        f"{100 * abs(change):.0f}%."
    ]
    fl = st.get("delta_floor") or {}
    if fl.get("windows"):
        below = 100 * fl.get("share_below_70pct_of_base", 0)
        out.append(
            f"{author_of(r)}'s own text cut to the same length ({fl['words']} words, {fl['windows']} windows through "
            f"the train split) scores Delta {fl['median']:.3f} (median; range {fl['min']:.3f}–{fl['max']:.3f}): the "
            f"floor a perfect imitator would reach with this much text. {below:.0f}% "
            "of those windows are 30% or more below the base model."
        )
    return out


def attribution_sentences(r: dict[str, Any]) -> list[str]:
    from shelley.eval.voice import summary_lines

    return summary_lines(r["attribution"], {**r.get("labels", DEFAULT_LABELS), "held_out": "held out"})


def attribution_rows(r: dict[str, Any]) -> list[dict[str, str]]:
    """One row per text of the attribution table: bags, share to the author with its interval, the runner-up."""
    a = r["attribution"]
    names = {c["key"]: c["name"] for c in a["candidates"]}
    lb = {**r.get("labels", DEFAULT_LABELS), "held_out": f"{a['author']} (held out)"}
    rows = []
    for who, x in a["results"].items():
        others = sorted(((v, k) for k, v in x["shares"].items() if k != a["target"]), reverse=True)
        top = f"{names.get(others[0][1], others[0][1])} {100 * others[0][0]:.0f}%" if others and others[0][0] else "—"
        lo, hi = x["interval"]
        rows.append(
            {
                "text": lb.get(who, who),
                "bags": str(x["bags"]),
                "share": f"{100 * x['target_share']:.0f}%",
                "interval": f"{100 * lo:.0f}–{100 * hi:.0f}%",
                "centroid": f"{100 * x['centroid']['target_share']:.0f}%",
                "runner_up": top,
            }
        )
    return rows


def _cell(t: str) -> str:
    return " ".join(t.split()).replace("|", "\\|")


def describe_copy(c: dict[str, Any] | None) -> str:
    if not c:
        return ""
    return f"longest copy {c['longest_span']} words, {100 * c['ngram_share']:.0f}% of 8-grams in corpus"


DEFAULT_LABELS = {"base": "base", "finetuned": "fine-tuned"}


def _md_perplexity(r: dict[str, Any]) -> list[str]:
    p = r["perplexity"]
    tr = r.get("training", {})
    lb = r.get("labels", DEFAULT_LABELS)
    lines = ["| model | validation perplexity | loss (nats/token) | tokens | seconds |", "|---|---|---|---|---|"]
    for who in ("base", "finetuned"):
        q = p[who]
        lines.append(f"| {lb[who]} | {q['perplexity']:.2f} | {q['nll']:.3f} | {q['tokens']} | {q['seconds']} |")
    lines += [
        "",
        f"{lb['finetuned'].capitalize()} / {lb['base']} perplexity: **{p['ratio']:.3f}** "
        "(same validation tokens, same windows).",
        "",
    ]
    if "unigram" in r:
        u = r["unigram"]
        loss = p["finetuned"]["nll"]
        lines += [
            "Context-free baselines on the same validation tokens (nats/token): unigram entropy of the validation "
            f"text **{u['entropy']:.3f}**, train-fitted unigram cross-entropy {u['cross_entropy']:.3f}; the trained "
            f"model's loss **{loss:.3f}** is {u['entropy'] - loss:.3f} nats/token below the entropy.",
            "",
        ]
    if r.get("prompt_set"):
        ps = r["prompt_set"]
        lines += [f"Prompt set: **{ps['name']}**."]
        if ps.get("checked_samples"):
            h, n = ps["hits"], ps["checked_samples"]
            lines += [
                f" Samples containing the expected answer: {lb['base']} {h['base']}/{n}, "
                f"{lb['finetuned']} {h['finetuned']}/{n}."
            ]
        lines.append("")
    if tr:
        lines += [training_sentence(tr), ""]
    gs = r["generation_seconds"]
    return [*lines, f"Generation wall time: base {gs['base']:.1f} s, fine-tuned {gs['finetuned']:.1f} s.", ""]


def training_sentence(tr: dict[str, Any]) -> str:
    """How training went and which weights were kept, in one sentence (train_summary.json in, text out)."""
    reason = tr.get("stop_reason") or ("time budget" if tr.get("stopped_early") else "steps")
    epochs = f" ({tr['epochs']:.2f} passes over the training tokens)" if tr.get("epochs") else ""
    out = (
        f"Training: {tr.get('steps')} steps{epochs} in {tr.get('train_seconds', 0):.0f} s, "
        f"{tr.get('tokens_per_second', 0):.0f} tokens/s, {tr.get('tokens_seen')} tokens seen"
    )
    out += {
        "steps": ".",
        "time budget": ", stopped by the time budget.",
        "max epochs": ", stopped at train.max_epochs.",
        "early stopping": ", stopped early: the validation loss had stopped improving.",
        "interrupted": ", interrupted.",
    }.get(reason, ".")
    if tr.get("budget_left_s"):
        out += f" {tr['budget_left_s']:.0f} s of the time budget were left unspent."
    if tr.get("best_step") is not None:
        kept = tr.get("kept_step")
        which = "the best" if kept == tr["best_step"] else "the last, never validated, so not replaced"
        out += (
            f" Best validation loss {tr['best_val_loss']:.4f} at step {tr['best_step']}; kept the weights of step "
            f"{kept} ({which})."
        )
    return out


def _md_originality(r: dict[str, Any]) -> list[str]:
    o = r["originality"]
    lb = r.get("labels", DEFAULT_LABELS)
    lines = [
        "## Originality",
        "",
        f"Longest run of words copied from the corpus, and the share of word {o['ngram_n']}-grams found in it "
        f"(threshold {o['threshold_words']} words).",
        "",
        "| model | samples | longest copy (max) | longest copy (mean) | 8-grams in corpus | over threshold |",
        "|---|---|---|---|---|---|",
    ]
    for who in ("base", "finetuned"):
        s = o[who]
        lines.append(
            f"| {lb[who]} | {s['samples']} | {s['longest_span_max']} | {s['longest_span_mean']:.1f} "
            f"| {100 * s['ngram_share_mean']:.1f}% | {s['over_threshold']} |"
        )
    return [*lines, ""]


def _md_attribution(r: dict[str, Any]) -> list[str]:
    if "attribution" not in r:
        return ["## Who wrote this?", "", f"Skipped: {r['attribution_skipped']}", ""]
    a = r["attribution"]
    lines = [
        f"## Who wrote this? {a['author']} among {len(a['candidates'])} authors",
        "",
        f"Each text is cut into bags of {a['bag_words']} words; a linear SVM over the bags' 300 most frequent "
        "words and punctuation marks (z-scored, cosine-normalised) names the author of each bag; the nearest "
        "author centroid (cosine Delta) is shown beside it.",
        "",
        *[f"- {line}" for line in attribution_sentences(r)],
        "",
        f"| text | bags | to {a['author']} | 95% interval | centroid | most attributed other author |",
        "|---|---|---|---|---|---|",
        *[
            f"| {x['text']} | {x['bags']} | {x['share']} | {x['interval']} | {x['centroid']} | {x['runner_up']} |"
            for x in attribution_rows(r)
        ],
        "",
        "![attribution](attribution.png)",
        "",
    ]
    if a.get("dropped"):
        lines += [f"Left out of the other authors (the corpus's own author): {'; '.join(a['dropped'])}.", ""]
    return lines


def _md_style(r: dict[str, Any]) -> list[str]:
    lines = ["## Style", "", *style_sentences(r), ""]
    lines += [
        "| text | words | Delta | Delta per sample | sentence length | ; per 1k | — per 1k | , per 1k "
        "| MATTR | unseen words |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in style_labels(r).items():
        g = r["style"]["groups"][key]
        pk = g["per_1000_words"]
        lines.append(
            f"| {label} | {g['words']} | {g['delta']:.3f} | {g['delta_per_text']:.3f} "
            f"| {g['sentence_length_mean']:.1f} | {pk['semicolon']:.1f} | {pk['dash']:.1f} | {pk['comma']:.1f} "
            f"| {g['mattr']:.3f} | {100 * g['unseen_word_share']:.1f}% |"
        )
    return [*lines, ""]


def _md_generations(r: dict[str, Any]) -> list[str]:
    lb = r.get("labels", DEFAULT_LABELS)
    lines = ["## Generations", ""]
    for g in r["generations"]:
        head = f"### {_cell(g['prompt'])}" + (f" (expected: `{g['expect']}`)" if "expect" in g else "")
        lines += [head, "", f"| {lb['base']} | {lb['finetuned']} |", "|---|---|"]
        bo = g.get("base_originality") or [None] * len(g["base"])
        fo = g.get("finetuned_originality") or [None] * len(g["finetuned"])
        for b, f, ob, of in zip(g["base"], g["finetuned"], bo, fo, strict=True):
            lines.append(f"| {_cell(b)} | {_cell(f)} |")
            if ob or of:
                lines.append(f"| *{describe_copy(ob)}* | *{describe_copy(of)}* |")
        lines.append("")
    return lines


def render_eval_md(r: dict[str, Any]) -> str:
    """eval.md: one section per measure, each section present when the results have it."""
    lines = [
        f"# Evaluation: {r['model']} ({r['method']})",
        "",
        f"Corpus: *{(r.get('corpus') or {}).get('title', 'the corpus')}* by {author_of(r)}.",
        "",
        *_md_perplexity(r),
    ]
    if "originality" in r:
        lines += _md_originality(r)
    if "attribution" in r or r.get("attribution_skipped"):
        lines += _md_attribution(r)
    if "style" in r:
        lines += _md_style(r)
    lines += _md_generations(r)
    lines += ["## Hyperparameters", "", "```yaml", yaml.safe_dump(r["hyperparameters"], sort_keys=False).strip(), "```"]
    return "\n".join(lines) + "\n"


def render_eval_html(r: dict[str, Any], images: dict[str, bytes] | None = None) -> str:
    """The same report as HTML (a jinja2 template in the package), to read the generations side by side; the
    ``images`` (PNG bytes: the loss curve, the attribution chart) are embedded, so the file stands alone."""
    from importlib.resources import files

    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(files("shelley.eval").joinpath("templates/eval.html.j2").read_text("utf-8"))
    hyper = yaml.safe_dump(r["hyperparameters"], sort_keys=False)
    labels = r.get("labels", DEFAULT_LABELS)
    uris = {k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in (images or {}).items()}
    return template.render(
        r=r,
        describe_copy=describe_copy,
        style_labels=style_labels(r),
        style_sentences=style_sentences(r) if "style" in r else [],
        attribution_sentences=attribution_sentences(r) if "attribution" in r else [],
        attribution_rows=attribution_rows(r) if "attribution" in r else [],
        author=author_of(r),
        title=(r.get("corpus") or {}).get("title", "the corpus"),
        hyper=hyper,
        lb=labels,
        images=uris,
    )


VOICE_TEXTS = "voice-texts.json"  # the attribution's generated texts, for `shelley ab`


def write_eval(run_dir: Path, results: dict[str, Any]) -> dict[str, Any]:
    """eval.json, eval.md, eval.html (with the loss curve and attribution chart embedded), attribution.png and
    the attribution's texts; returns the results as eval.json holds them (without the texts)."""
    from shelley.generate.load import find_train_run
    from shelley.io import atomic_write_text, write_json

    run_dir = Path(run_dir)
    results = dict(results)
    images = {}
    train_dir = find_train_run(run_dir)
    if train_dir is not None and (train_dir / "loss.png").exists():
        images["loss"] = (train_dir / "loss.png").read_bytes()
    if "attribution" in results:
        from shelley.eval.voice import plot_attribution

        a = dict(results["attribution"])
        texts = a.pop("texts", None)
        results["attribution"] = a
        if texts:
            title = results.get("corpus", {}).get("title", "the corpus")
            doc = {"author": a["author"], "title": title, "bag_words": a["bag_words"], "texts": texts}
            write_json(run_dir / VOICE_TEXTS, doc)
        labels = {**results.get("labels", DEFAULT_LABELS), "held_out": f"{a['author']} (held out)"}
        images["attribution"] = plot_attribution(a, labels, run_dir / "attribution.png").read_bytes()
    write_json(run_dir / "eval.json", results)
    atomic_write_text(run_dir / "eval.md", render_eval_md(results))
    atomic_write_text(run_dir / "eval.html", render_eval_html(results, images))
    return results
