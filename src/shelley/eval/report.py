"""The evaluation report: an ``EvalResult`` (``evaluate``) rendered as eval.md and eval.html, written with
eval.json beside them; the sentences and tables the model card reuses."""

from __future__ import annotations

import base64
from typing import Any

import yaml

from shelley.data.card import books_table
from shelley.errors import ShelleyError
from shelley.eval.heldout import heldout_lines
from shelley.io import atomic_write_text, write_json
from shelley.records import EvalResult, StyleResult, TrainResult
from shelley.run import Run


def style_labels(style: StyleResult | None, author: str) -> dict[str, str]:
    """Row labels of the style table, naming the corpus's own author (older reports: shelley_train_sample)."""
    a = author
    labels = {
        "base": "base model",
        "finetuned": "fine-tuned model",
        "author_train_sample": f"{a} (train, same length)",
        "shelley_train_sample": f"{a} (train, same length)",
        "held_out": f"{a} (held out, reference)",
    }
    groups = style.groups if style else {}
    return {k: v for k, v in labels.items() if k in groups}


def style_sentences(st: StyleResult, author: str) -> list[str]:
    """What the Delta figures say, with the sign of the change spelled out and the noise floor beside it."""
    change = st.delta_reduction
    verb = "lowered" if change >= 0 else "raised"
    out = [
        f"Burrows' Delta to the held-out text over the corpus's {len(st.features)} most frequent function words "
        f"(lower is closer; a secondary measure, noisy at this length). Fine-tuning {verb} Delta by "
        f"{100 * abs(change):.0f}%."
    ]
    fl = st.delta_floor
    if fl.get("windows"):
        below = 100 * fl.get("share_below_70pct_of_base", 0)
        out.append(
            f"{author}'s own text cut to the same length ({fl['words']} words, {fl['windows']} windows through "
            f"the train split) scores Delta {fl['median']:.3f} (median; range {fl['min']:.3f}–{fl['max']:.3f}): the "
            f"floor a perfect imitator would reach with this much text. {below:.0f}% "
            "of those windows are 30% or more below the base model."
        )
    return out


def attribution_sentences(r: EvalResult) -> list[str]:
    from shelley.eval.voice import summary_lines

    return summary_lines(r.attribution.model_dump(), {**r.labels, "held_out": "held out", "prompted": "prompted base"})


def attribution_rows(r: EvalResult) -> list[dict[str, str]]:
    """One row per text of the attribution table: bags, share to the author with its interval, the runner-up."""
    a = r.attribution
    names = {c["key"]: c["name"] for c in a.candidates}
    lb = {
        **r.labels,
        "held_out": f"{a.author} (held out)",
        "prompted": f"{r.labels['base']}, asked for {a.author}'s style",
    }
    rows = []
    for who, x in a.results.items():
        others = sorted(((v, k) for k, v in x["shares"].items() if k != a.target), reverse=True)
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


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _cell(t: str) -> str:
    return " ".join(t.split()).replace("|", "\\|")


def describe_copy(c: dict[str, Any] | None) -> str:
    if not c:
        return ""
    return f"longest copy {c['longest_span']} words, {100 * c['ngram_share']:.0f}% of 8-grams in corpus"


def _md_perplexity(r: EvalResult) -> list[str]:
    p, lb = r.perplexity, r.labels
    lines = [
        "| model | validation perplexity | loss (nats/token) | bits per byte | bits per word | tokens | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for who in ("base", "finetuned"):
        q = getattr(p, who)
        lines.append(
            f"| {lb[who]} | {q.perplexity:.2f} | {q.nll:.3f} | {_num(q.bits_per_byte)} | {_num(q.bits_per_word, 2)} "
            f"| {q.tokens} | {q.seconds} |"
        )
    lines += [
        "",
        f"{lb['finetuned'].capitalize()} / {lb['base']} perplexity: **{p.ratio:.3f}** "
        "(same validation tokens, same windows). Bits per byte compare models whose tokenizers differ; "
        "perplexities only compare models that share one.",
        "",
    ]
    if r.unigram:
        u, loss = r.unigram, p.finetuned.nll
        lines += [
            "Context-free baselines on the same validation tokens (nats/token): unigram entropy of the validation "
            f"text **{u['entropy']:.3f}**, train-fitted unigram cross-entropy {u['cross_entropy']:.3f}; the trained "
            f"model's loss **{loss:.3f}** is {u['entropy'] - loss:.3f} nats/token below the entropy.",
            "",
        ]
    if r.prompt_set:
        ps = r.prompt_set
        lines += [f"Prompt set: **{ps['name']}**."]
        if ps.get("checked_samples"):
            h, n = ps["hits"], ps["checked_samples"]
            lines += [
                f" Samples containing the expected answer: {lb['base']} {h['base']}/{n}, "
                f"{lb['finetuned']} {h['finetuned']}/{n}."
            ]
        lines.append("")
    if r.training:
        lines += [training_sentence(r.training), ""]
    gs = r.generation_seconds
    return [*lines, f"Generation wall time: base {gs['base']:.1f} s, fine-tuned {gs['finetuned']:.1f} s.", ""]


def training_sentence(tr: TrainResult) -> str:
    """How training went and which weights were kept, in one sentence."""
    epochs = f" ({tr.epochs:.2f} passes over the training tokens)" if tr.epochs else ""
    out = (
        f"Training: {tr.steps} steps{epochs} in {tr.train_seconds:.0f} s, "
        f"{tr.tokens_per_second:.0f} tokens/s, {tr.tokens_seen} tokens seen"
    )
    out += {
        "steps": ".",
        "time budget": ", stopped by the time budget.",
        "max epochs": ", stopped at train.max_epochs.",
        "early stopping": ", stopped early: the validation loss had stopped improving.",
        "interrupted": ", interrupted.",
    }.get(tr.stop_reason, ".")
    if tr.budget_left_s:
        out += f" {tr.budget_left_s:.0f} s of the time budget were left unspent."
    if tr.best_step is not None:
        which = "the best" if tr.kept_step == tr.best_step else "the last, never validated, so not replaced"
        out += (
            f" Best validation loss {tr.best_val_loss:.4f} at step {tr.best_step}; kept the weights of step "
            f"{tr.kept_step} ({which})."
        )
    return out


def _md_originality(r: EvalResult) -> list[str]:
    o, lb = r.originality, r.labels
    lines = [
        "## Originality",
        "",
        f"Longest run of words copied from the corpus, and the share of word {o.ngram_n}-grams found in it "
        f"(threshold {o.threshold_words} words).",
        "",
        "| model | samples | longest copy (max) | longest copy (mean) | 8-grams in corpus | over threshold |",
        "|---|---|---|---|---|---|",
    ]
    for who in ("base", "finetuned"):
        c = getattr(o, who)
        lines.append(
            f"| {lb[who]} | {c.samples} | {c.longest_span_max} | {c.longest_span_mean:.1f} "
            f"| {100 * c.ngram_share_mean:.1f}% | {c.over_threshold} |"
        )
    return [*lines, ""]


def _md_attribution(r: EvalResult) -> list[str]:
    if not r.attribution:
        return ["## Who wrote this?", "", f"Skipped: {r.attribution_skipped}", ""]
    a = r.attribution
    lines = [
        f"## Who wrote this? {a.author} among {len(a.candidates)} authors",
        "",
        f"Each text is cut into bags of {a.bag_words} words; a linear SVM over the bags' 300 most frequent "
        "words and punctuation marks (z-scored, cosine-normalised) names the author of each bag; the nearest "
        "author centroid (cosine Delta) is shown beside it.",
        "",
        *[f"- {line}" for line in attribution_sentences(r)],
        "",
        f"| text | bags | to {a.author} | 95% interval | centroid | most attributed other author |",
        "|---|---|---|---|---|---|",
        *[
            f"| {x['text']} | {x['bags']} | {x['share']} | {x['interval']} | {x['centroid']} | {x['runner_up']} |"
            for x in attribution_rows(r)
        ],
        "",
        "![attribution](attribution.png)",
        "",
    ]
    if a.dropped:
        lines += [f"Left out of the other authors (the corpus's own author): {'; '.join(a.dropped)}.", ""]
    if a.curve:
        lines += ["Share of bags to the author against bag size (the test refitted at each size):", ""]
        lines += [f"| words per bag | valid | {a.author} held out | worst impostor | " + " | ".join(
            r.labels.get(k, k) for k in a.curve[0]["texts"]) + " |"]  # fmt: skip
        lines += ["|---" * (4 + len(a.curve[0]["texts"])) + "|"]
        for row in curve_rows(a):
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "![bag-size curve](bag-size-curve.png)", ""]
    return lines


def curve_rows(a) -> list[list[str]]:
    """The bag-size curve as table cells: size, validity, shares with their bags."""
    keys = list(a.curve[0]["texts"]) if a.curve else []

    def cell(got) -> str:
        return "—" if not got else f"{got['target_bags']}/{got['bags']} = {100 * got['target_share']:.0f}%"

    return [
        [f"{c['bag_words']:,}", "yes" if c["valid"] else "no", cell(c["own_held_out"]),
         f"{100 * c['impostor_max_share']:.0f}%", *(cell(c["texts"].get(k)) for k in keys)]
        for c in a.curve
    ]  # fmt: skip


def _md_style(r: EvalResult) -> list[str]:
    lines = ["## Style", "", *style_sentences(r.style, r.author), ""]
    lines += [
        "| text | words | Delta | Delta per sample | sentence length | ; per 1k | — per 1k | , per 1k "
        "| MATTR | unseen words |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in style_labels(r.style, r.author).items():
        g = r.style.groups[key]
        pk = g["per_1000_words"]
        lines.append(
            f"| {label} | {g['words']} | {g['delta']:.3f} | {g['delta_per_text']:.3f} "
            f"| {g['sentence_length_mean']:.1f} | {pk['semicolon']:.1f} | {pk['dash']:.1f} | {pk['comma']:.1f} "
            f"| {g['mattr']:.3f} | {100 * g['unseen_word_share']:.1f}% |"
        )
    return [*lines, ""]


def scene_sentences(r: EvalResult) -> list[str]:
    """What the scene test found: the rule's verdict with its figures, and the context curve's two bands."""
    sc, lb, a = r.scenes, r.labels, r.author
    s = sc.summary
    out = [
        f"{sc.scenes} scenes of {sc.words} words per model from the eval prompts (no originality guard: the model "
        f"is judged, not the writer), beside {s['author']['texts']} passages of {a}'s held-out text of the same "
        "length."
    ]
    if sc.rule:
        verdict = "PASS" if sc.rule["pass"] else "FAIL"
        failed = [k.replace("_", " ") for k, ok in sc.rule["checks"].items() if not ok]
        out.append(
            f"Pre-registered scene rule: {verdict}" + (f" (failed: {', '.join(failed)})" if failed else "") + "."
            + ("" if sc.rule["attribution_checked"] else " Attribution was not run (no reference set or no "
               "--attribution), so the rule's attribution points are missing.")
        )  # fmt: skip
    for who, c in sc.context_curve.items():
        if c.get("band_512_1024") is not None:
            out.append(
                f"Context curve, {lb.get(who, who)}: mean loss {c['band_64_128']:.3f} at positions 64–128 and "
                f"{c['band_512_1024']:.3f} at 512–1,024 nats/token ({c['windows']} windows of {c['window']} tokens)."
            )
    return out


def scene_rows(r: EvalResult) -> list[dict[str, str]]:
    """One row per text group of the scene table (medians, loops, copies, name churn, attribution)."""
    lb = {**r.labels, "author": f"{r.author} (held out)"}
    rows = []
    for who, x in r.scenes.summary.items():
        if not x.get("texts"):
            continue
        rows.append(
            {
                "text": lb.get(who, who),
                "n": str(x["texts"]),
                "rep4": f"{100 * x['median_repeated_4gram_share']:.2f}%",
                "d2": f"{x['median_distinct_2']:.3f}",
                "gzip": f"{x['median_gzip_ratio']:.3f}",
                "self": f"{x['median_longest_self_repeat']:.0f}",
                "loops": str(x["loops"]),
                "copied": str(x.get("max_longest_copied", "—")),
                "names": f"{x.get('median_names_per_1000', 0):.1f}",
                "author": f"{x['to_author']}/{x['texts']}" if "to_author" in x else "—",
            }
        )
    return rows


def _md_scenes(r: EvalResult) -> list[str]:
    if not r.scenes:
        return ["## Whole scenes", "", f"Skipped: {r.scenes_skipped}", ""]
    lines = ["## Whole scenes", "", *[f"- {x}" for x in scene_sentences(r)], ""]
    lines += [
        f"| text | scenes | repeated 4-grams | distinct-2 | gzip ratio | longest self-repeat | loops "
        f"| longest copy | names per 1k words | to {r.author} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in scene_rows(r):
        lines.append(
            f"| {x['text']} | {x['n']} | {x['rep4']} | {x['d2']} | {x['gzip']} | {x['self']} | {x['loops']} "
            f"| {x['copied']} | {x['names']} | {x['author']} |"
        )
    return [*lines, "", "![context curve](context.png)", ""]


def _md_generations(r: EvalResult) -> list[str]:
    lb = r.labels
    lines = ["## Generations", ""]
    for g in r.generations:
        head = f"### {_cell(g.prompt)}" + (f" (expected: `{g.expect}`)" if g.expect is not None else "")
        lines += [head, "", f"| {lb['base']} | {lb['finetuned']} |", "|---|---|"]
        bo = g.base_originality or [None] * len(g.base)
        fo = g.finetuned_originality or [None] * len(g.finetuned)
        for b, f, ob, of in zip(g.base, g.finetuned, bo, fo, strict=True):
            lines.append(f"| {_cell(b)} | {_cell(f)} |")
            if ob or of:
                lines.append(f"| *{describe_copy(ob)}* | *{describe_copy(of)}* |")
        lines.append("")
    return lines


def render_eval_md(r: EvalResult) -> str:
    """eval.md: one section per measure, each section present when the results have it."""
    lines = [f"# Evaluation: {r.model} ({r.method})", "", f"Corpus: *{r.title}* by {r.author}.", ""]
    books, scored = (r.data or {}).get("books"), (r.data or {}).get("scored")
    if books:
        lines += [f"{len(books)} books, each split on its own (whole chapters held out):", "", *books_table(books)]
    if scored and scored["tokens"] < scored["of_tokens"]:
        lines += [
            f"Within the job's budget both models are scored on {scored['tokens']:,} of the {scored['of_tokens']:,} "
            "validation tokens (the first held-out chapters of each book, in proportion); `shelley eval` on the "
            "run scores the same tokens.",
            "",
        ]
    lines += _md_perplexity(r)
    if r.originality:
        lines += _md_originality(r)
    if r.attribution or r.attribution_skipped:
        lines += _md_attribution(r)
    if r.scenes or r.scenes_skipped:
        lines += _md_scenes(r)
    if r.heldout_books:
        lines += heldout_lines(r.heldout_books, r.labels)
    if r.style:
        lines += _md_style(r)
    lines += _md_generations(r)
    lines += ["## Hyperparameters", "", "```yaml", yaml.safe_dump(r.hyperparameters, sort_keys=False).strip(), "```"]
    return "\n".join(lines) + "\n"


def render_eval_html(r: EvalResult, images: dict[str, bytes] | None = None) -> str:
    """The same report as HTML (a jinja2 template in the package), to read the generations side by side; the
    ``images`` (PNG bytes: the loss curve, the attribution chart) are embedded, so the file stands alone."""
    from importlib.resources import files

    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(files("shelley.eval").joinpath("templates/eval.html.j2").read_text("utf-8"))
    uris = {k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in (images or {}).items()}
    return template.render(
        r=r,
        describe_copy=describe_copy,
        style_labels=style_labels(r.style, r.author),
        style_sentences=style_sentences(r.style, r.author) if r.style else [],
        attribution_sentences=attribution_sentences(r) if r.attribution else [],
        attribution_rows=attribution_rows(r) if r.attribution else [],
        scene_sentences=scene_sentences(r) if r.scenes else [],
        scene_rows=scene_rows(r) if r.scenes else [],
        curve_rows=curve_rows(r.attribution) if r.attribution and r.attribution.curve else [],
        author=r.author,
        title=r.title,
        hyper=yaml.safe_dump(r.hyperparameters, sort_keys=False),
        lb=r.labels,
        images=uris,
        num=_num,
    )


def write_eval(run: Run, results: EvalResult, texts: dict[str, str] | None = None) -> EvalResult:
    """eval.json, eval.md, eval.html (with the loss curve and attribution chart embedded), attribution.png and
    the attribution's ``texts`` (voice-texts.json, for `shelley ab`), all in the run's root; with the scene
    test also context.png and its texts (``texts["scenes"]``: scene-texts.json, for `shelley ab --scenes`)."""

    images = {}
    if run.loss_plot.exists():
        images["loss"] = run.loss_plot.read_bytes()
    texts = dict(texts or {})
    scene_texts = texts.pop("scenes", None)
    if results.scenes:
        from shelley.eval.scenes import plot_context_curve

        if scene_texts:
            doc = {"author": results.author, "title": results.title, "words": results.scenes.words}
            write_json(run.scene_texts, doc | {"texts": scene_texts})
        if any(c.get("windows") for c in results.scenes.context_curve.values()):
            labels = results.labels
            images["context"] = plot_context_curve(results.scenes.context_curve, labels, run.context_plot).read_bytes()
    if results.attribution:
        from shelley.eval.voice import plot_attribution

        a = results.attribution
        if texts:
            doc = {"author": a.author, "title": results.title, "bag_words": a.bag_words, "texts": texts}
            write_json(run.voice_texts, doc)
        labels = {**results.labels, "held_out": f"{a.author} (held out)", "prompted": "base, prompted"}
        images["attribution"] = plot_attribution(a.model_dump(), labels, run.attribution_plot).read_bytes()
        if a.curve:
            from shelley.eval.voice import plot_curve

            images["curve"] = plot_curve(a.curve, a.author, run.curve_plot).read_bytes()
    write_json(run.eval_json, results.to_json())
    atomic_write_text(run.eval_md, render_eval_md(results))
    atomic_write_text(run.eval_html, render_eval_html(results, images))
    return results


def keep_earlier(run: Run, results: EvalResult) -> EvalResult:
    """What an earlier eval.json of the run measured that this evaluation does not: the whole job's figures of
    `shelley run` (budget, wall time, data), and an attribution or a scene test of the same model when this one
    has none."""
    if not run.eval_json.exists():
        return results
    try:
        old = EvalResult.load(run.eval_json)
    except ShelleyError:
        return results  # a damaged report is replaced, not merged
    for name in ("time_budget_s", "wall_seconds", "train_budget_s", "seconds", "data"):
        if getattr(results, name) is None:
            setattr(results, name, getattr(old, name))
    if results.attribution is None and old.attribution is not None:
        results.attribution = old.attribution
    if results.heldout_books is None and old.heldout_books is not None:
        results.heldout_books = old.heldout_books
    if results.scenes is None and old.scenes is not None:
        results.scenes, results.scenes_skipped = old.scenes, None
    return results
