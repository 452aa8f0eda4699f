"""``shelley eval RUN_DIR``: base vs fine-tuned perplexity on the same validation tokens, side-by-side
generations with the same seeds and settings, timing and hyperparameters -> eval.json and eval.md."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from shelley.config import ShelleyConfig
from shelley.data.card import books_table
from shelley.errors import ShelleyError
from shelley.eval.heldout import book_curve, book_stream, heldout_lines, judge_book
from shelley.io import atomic_write_text, write_json
from shelley.models.bos import bos_prefix
from shelley.records import AttributionResult, EvalResult, SceneResult, StyleResult, TrainResult
from shelley.run import Run


def cached_stream(run: Run, split: str = "validation") -> np.ndarray:
    """The token stream of ``split`` that training cached in the run."""
    cached = sorted(run.cache_dir.glob(f"{split}-*.npy"))
    if not cached:
        raise ShelleyError(f"{run.train_dir} has no cached {split} tokens; re-run `shelley train`")
    return np.load(cached[-1], mmap_mode="r")


def score_model(model, tokenizer, stream: np.ndarray, cfg: ShelleyConfig) -> dict[str, Any]:
    """Perplexity on ``stream`` and generations for the eval prompts (fixed seed), each timed."""
    from shelley.generate import generate_texts

    ppl = _perplexity(model, tokenizer, stream, cfg)
    t0 = time.perf_counter()
    gen = cfg.generation.model_copy(update={"num_samples": cfg.eval.samples_per_prompt})
    if cfg.eval.full_length:
        gen.min_new_tokens = gen.max_new_tokens
    texts = generate_texts(model, tokenizer, cfg.eval.prompts, gen)  # same seed and settings for every model
    return {"perplexity": ppl, "generations": texts, "generation_seconds": round(time.perf_counter() - t0, 2)}


def score_with_voice(
    model, tokenizer, stream: np.ndarray, cfg: ShelleyConfig, bags: int | None, who: str, on_progress=None
) -> dict[str, Any]:
    """``score_model`` plus ``bags`` attribution bags of the model's text under ``"voice"`` (no bags: just
    ``score_model``).

    With ``eval.full_length`` the side-by-side samples are the first tokens of the attribution text's first
    round (see ``generate_for_bags``), so one generation pass writes both; ``generation_seconds`` is then that
    pass's time, shared with ``voice["seconds"]`` (``voice["shared"]``). Otherwise the side-by-side samples are
    written first and open the attribution text."""
    from shelley.eval.voice import SAMPLE_TOKENS

    if not bags:
        return score_model(model, tokenizer, stream, cfg)
    if not (cfg.eval.full_length and cfg.generation.max_new_tokens <= SAMPLE_TOKENS):
        scored = score_model(model, tokenizer, stream, cfg)
        scored["voice"] = voice_text(model, tokenizer, cfg, bags, who, on_progress, first=scored["generations"])
        return scored
    ppl = _perplexity(model, tokenizer, stream, cfg)
    voice = voice_text(model, tokenizer, cfg, bags, who, on_progress, side_by_side=cfg.eval.samples_per_prompt)
    voice["shared"] = True
    seconds = round(voice["seconds"], 2)
    return {"perplexity": ppl, "generations": voice.pop("side_by_side"), "generation_seconds": seconds, "voice": voice}


def _perplexity(model, tokenizer, stream: np.ndarray, cfg: ShelleyConfig) -> dict[str, Any]:
    """Perplexity on the validation tokens (a BOS in front of every window where the model expects one), with
    bits per byte and per word of the same text beside it."""
    from shelley.models.perplexity import per_byte, perplexity, scored_text

    t0 = time.perf_counter()
    ppl = perplexity(
        model,
        stream,
        max_length=cfg.model.max_length,
        stride=cfg.eval.stride,
        batch_size=cfg.train.micro_batch_size,
        max_tokens=cfg.eval.max_eval_tokens,
        prefix=bos_prefix(tokenizer),
    )
    ppl |= per_byte(ppl, scored_text(tokenizer, stream, cfg.eval.max_eval_tokens))
    ppl["seconds"] = round(time.perf_counter() - t0, 2)
    return ppl


def combine(
    cfg: ShelleyConfig, base: dict[str, Any], tuned: dict[str, Any], training: TrainResult | None
) -> EvalResult:
    """The report's core: perplexity, the side-by-side generations, training figures and the corpus's author."""
    n = cfg.eval.samples_per_prompt
    ppl = {"base": base["perplexity"], "finetuned": tuned["perplexity"]}
    ppl["ratio"] = ppl["finetuned"]["perplexity"] / ppl["base"]["perplexity"]
    return EvalResult(
        **{
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
    )


def judge(results: EvalResult, run: Run, cfg: ShelleyConfig) -> EvalResult:
    """Add originality (copied spans against the run's corpus) and stylometry (base vs fine-tuned vs the author's
    own text, Delta to the held-out text) to ``results`` built by ``combine``."""
    from shelley.eval.originality import run_index
    from shelley.eval.style import StyleModel, compare, delta_floor, window_spans, words

    rows = run.corpus_rows()
    index = run_index(run)
    train_texts = [r["text"] for r in rows if r["split"] == "train"]
    held_out = [r["text"] for r in rows if r["split"] == "validation"]
    limit = cfg.eval.max_copied_span
    for g in results.generations:
        g.base_originality = [index.check(t) for t in g.base]
        g.finetuned_originality = [index.check(t) for t in g.finetuned]
    summary = {}
    for who in ("base", "finetuned"):
        checks = [c for g in results.generations for c in getattr(g, f"{who}_originality")]
        summary[who] = {
            "samples": len(checks),
            "longest_span_max": max((c["longest_span"] for c in checks), default=0),
            "longest_span_mean": sum(c["longest_span"] for c in checks) / max(1, len(checks)),
            "ngram_share_mean": sum(c["ngram_share"] for c in checks) / max(1, len(checks)),
            "over_threshold": sum(c["longest_span"] > limit for c in checks),
        }
    results.originality = {"threshold_words": limit, "ngram_n": 8, "corpus_sha256": index.sha256} | summary

    style = StyleModel.fit(train_texts, n_features=cfg.eval.style_features)
    groups = {who: [t for g in results.generations for t in getattr(g, who)] for who in ("base", "finetuned")}
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
    results.style = {
        "reference": f"held-out validation text of {cfg.data.title or 'the corpus'}",
        "features": style.features,
        "groups": table,
        "delta_reduction": (base_d - ft_d) / base_d if base_d else 0.0,
        "delta_floor": floor,
    }
    return results


def evaluate_run(
    run: Run,
    prompts: tuple[str, list] | None = None,
    *,
    attribution_bags: int | None = None,
    reference_dir: str | None = None,
    bag_words: int | None = None,
    keep_names: bool = False,
    scenes: int | None = None,
    scene_words: int = 1000,
    scene_engine: Callable | None = None,
    heldout_books: list[Path] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[EvalResult, dict[str, str] | None]:
    """Evaluate a finished ``shelley train`` (or ``shelley run``) run: base and trained models on the run's
    validation tokens, then originality and style of their generations. ``prompts`` is ``(name, [Prompt, ...])``
    from ``eval.prompts.load_prompts`` and replaces ``eval.prompts`` (an empty list keeps the run's own prompts).
    For a scratch run the "base" is the same GPT before training
    (same seed), and the report adds the unigram baselines of its tokenizer on the same validation tokens.
    ``attribution_bags`` adds the who-wrote-this test on that many bags of text from each model;
    ``on_progress(model, words, words_needed)`` follows its generation. Returns the result and the texts the
    attribution read (None without it), which ``write_eval`` keeps for ``shelley ab``. ``scenes``: that many
    scenes of ``scene_words`` words per model and the context curves (texts under ``"scenes"``), written by
    ``scene_engine(who, model, tokenizer, gen)`` (default: transformers). ``heldout_books``: see ``eval.heldout``."""
    from shelley.data.books import describe_corpus
    from shelley.generate.load import load_model_dir

    cfg, out = run.config(), run.output
    if bag_words:
        cfg.eval.bag_words = bag_words
    cfg.eval.keep_names = keep_names or cfg.eval.keep_names
    rows = run.corpus_rows()
    train_texts = [r["text"] for r in rows if r["split"] == "train"]
    val_texts = [r["text"] for r in rows if r["split"] == "validation"]
    who = describe_corpus(cfg, run.corpus_source(cfg), val_texts)
    if prompts is not None and prompts[1]:
        cfg.eval.prompts = [p.prompt for p in prompts[1]]
    voice = None
    if attribution_bags:
        from shelley.eval.voice import attribution_test_for

        # Before any generation: a missing reference set must fail in a second, not after minutes of sampling.
        voice = attribution_test_for(cfg, who, train_texts, val_texts, reference_dir, corpus=run.corpus_source(cfg))
    stream = cached_stream(run)
    base_model, tokenizer = _base_for_eval(cfg, out)
    books = [book_stream(b, tokenizer, cfg.data, train_texts, run.cache_dir) for b in heldout_books or []]
    base = score_with_voice(base_model, tokenizer, stream, cfg, attribution_bags, "base", on_progress)
    book_curves = _book_curves(books, [{} for _ in books], "base", base_model, tokenizer)
    sc = (scenes, scene_words, scene_engine, on_progress)
    passes = {"base": scene_model_pass(base_model, tokenizer, cfg, stream, None, *sc)}
    prompted = prompted_voice(base_model, tokenizer, cfg, attribution_bags, on_progress) if voice else None
    del base_model
    tuned_model = load_model_dir(out, trust_remote_code=cfg.model.trust_remote_code)
    tuned = score_with_voice(tuned_model, tokenizer, stream, cfg, attribution_bags, "finetuned", on_progress)
    passes["finetuned"] = scene_model_pass(tuned_model, tokenizer, cfg, stream, run, *sc)
    _book_curves(books, book_curves, "finetuned", tuned_model, tokenizer)
    written = {"base": base["voice"], "finetuned": tuned["voice"]} if voice else {}
    if prompted:
        written["prompted"] = prompted
    results = combine(cfg, base, tuned, run.train_result())
    results.run_dir = str(run.root)
    if cfg.train.method == "scratch":
        _scratch_baselines(results, run, stream, cfg, len(tokenizer))
    if prompts is not None:
        from shelley.eval.prompts import score_expectations

        checked = score_expectations(results.generations, prompts[1]) if prompts[1] else {}
        results.prompt_set = {"name": prompts[0]} | checked
    results = judge(results, run, cfg)
    results.heldout_books = [judge_book(info, c) for (_, info), c in zip(books, book_curves, strict=True)] or None
    texts = None
    if voice:
        results.attribution, texts = attribution_results(voice, written, val_texts, attribution_bags)
        results.attribution.curve = _bag_size_curve(who, train_texts, val_texts, written, voice, cfg, run)
    if scenes:
        # Scenes are attributed (one scene, one bag) where a reference set is there, with --attribution or not.
        test = voice or _optional_test(cfg, who, train_texts, val_texts, reference_dir, run)
        scene_texts = judge_scene_passes(results, run, passes, train_texts, val_texts, scene_words, test)
        texts = (texts or {}) | {"scenes": scene_texts}
    return results, texts


def _book_curves(books: list, curves: list[dict], who: str, model, tokenizer) -> list[dict]:
    """Each held-out book's context curve for ``who`` (base or finetuned), added to ``curves``."""
    from shelley.generate import context_window

    prefix = bos_prefix(tokenizer)
    for (stream, _), c in zip(books, curves, strict=True):
        c[who] = book_curve(model, stream, prefix, min(1024, context_window(model) - len(prefix)))
    return curves


def _optional_test(cfg: ShelleyConfig, who, train_texts, val_texts, reference_dir, run: Run):
    from shelley.eval.voice import optional_attribution_test

    return optional_attribution_test(cfg, who, train_texts, val_texts, reference_dir, corpus=run.corpus_source(cfg))[0]


def _per_bag(counts: list[int]) -> dict[str, Any]:
    """How many separate generations made up the bags: fewest, median, most."""
    if not counts:
        return {}
    ordered = sorted(counts)
    return {"generations_per_bag": [ordered[0], ordered[len(ordered) // 2], ordered[-1]]}


def _bag_size_curve(who, train_texts, val_texts, written: dict[str, dict], voice, cfg, run: Run):
    """The attribution's shares at 500 to 5,000 words per bag, for the generated texts (see ``bag_size_curve``)."""
    from shelley.eval.voice import bag_size_curve

    texts = {who_: w["text"] for who_, w in written.items()}
    return bag_size_curve(
        who, train_texts, val_texts, texts, voice.reference or None, corpus=run.corpus_source(cfg),
        keep_names=cfg.eval.keep_names,
    )  # fmt: skip


def judge_scene_passes(results: EvalResult, run: Run, passes, train_texts, val_texts, words: int, test):
    """Judge both models' scene passes into ``results.scenes``; returns the texts for scene-texts.json."""
    from shelley.eval.originality import run_index
    from shelley.eval.scenes import judge_scenes

    judged, scene_texts = judge_scenes(passes, train_texts, val_texts, words, index=run_index(run), test=test)
    results.scenes = SceneResult(**judged)
    return scene_texts


def scene_model_pass(
    model, tokenizer, cfg, stream, run: Run | None, n: int | None, words: int, engine=None, on_progress=None
):
    """One model's scene pass (None without ``n``): a model shelley trained reads end-of-text as a paragraph
    break, the base model a blank line (``generate.scene.paragraph_break_for``)."""
    if not n:
        return None
    from shelley.eval.scenes import scene_pass
    from shelley.generate.scene import paragraph_break_for

    who = "finetuned" if run is not None else "base"
    writer = engine(who, model, tokenizer, cfg.generation) if engine is not None else None
    return scene_pass(
        model, tokenizer, cfg, stream, n, words, paragraph_break=paragraph_break_for(run), who=who,
        on_progress=on_progress, engine=writer,
    )  # fmt: skip


def _scratch_baselines(results: EvalResult, run: Run, stream, cfg: ShelleyConfig, vocab: int) -> None:
    """A scratch run's labels (its "base" is the untrained GPT) and the unigram baselines of its tokenizer."""
    from shelley.models.perplexity import unigram_baselines

    results.labels = {"base": "untrained (random init)", "finetuned": "trained from scratch"}
    val = stream if cfg.eval.max_eval_tokens is None else stream[: cfg.eval.max_eval_tokens + 1]
    results.unigram = unigram_baselines(cached_stream(run, "train"), val, vocab)


def prompted_voice(model, tokenizer, cfg: ShelleyConfig, bags: int, on_progress=None) -> dict[str, Any] | None:
    """The prompted baseline's attribution text: the base model asked, prompt by prompt, to continue in the
    author's style (``eval.voice.prompted_prompts``); None for a scratch run, whose base knows no instructions."""
    if cfg.train.method == "scratch":
        return None
    from shelley.eval.voice import PROMPTED_INSTRUCTION, prompted_prompts

    asked = cfg.model_copy(deep=True)
    asked.eval.prompts = prompted_prompts(tokenizer, cfg.eval.prompts, cfg.data.author or "the author",
                                          cfg.data.title or "the book")  # fmt: skip
    out = voice_text(model, tokenizer, asked, bags, "prompted base", on_progress)
    out["instruction"] = PROMPTED_INSTRUCTION
    return out


def voice_text(
    model,
    tokenizer,
    cfg: ShelleyConfig,
    bags: int,
    who: str,
    on_progress=None,
    first: list[str] | None = None,
    side_by_side: int = 0,
) -> dict[str, Any]:
    """Enough of ``model``'s text for ``bags`` attribution bags (the eval prompts, sampled as in the report).
    ``first``: the model's side-by-side samples, which open the text so they are not written twice;
    ``side_by_side``: write that many side-by-side samples per prompt in the same pass instead."""
    from shelley.eval.voice import generate_for_bags

    def on_round(done: int, total: int) -> None:
        if on_progress:
            on_progress(who, done, total)

    return generate_for_bags(
        model, tokenizer, cfg.eval.prompts, cfg.generation, bags * cfg.eval.bag_words, first=first,
        side_by_side=side_by_side, on_round=on_round,
    )  # fmt: skip


def attribution_results(
    voice, written: dict[str, dict], held_out: list[str], bags: int
) -> tuple[AttributionResult, dict[str, str]]:
    """The attribution block of the report, and the texts it read (``write_eval`` keeps them in their own file,
    not in eval.json, for `shelley ab`)."""
    from shelley.eval.voice import generations_per_bag, judge_voice

    out = judge_voice(voice, {k: v["text"] for k, v in written.items()}, bags)
    out["generation"] = {
        k: {kk: v[kk] for kk in ("samples", "words")}
        | {"seconds": round(v["seconds"], 1)}
        | _per_bag(generations_per_bag(v.get("sample_words", []), voice.bag_words))
        for k, v in written.items()
    }
    if "prompted" in written:
        out["prompted_instruction"] = written["prompted"]["instruction"]
    texts = {k: v["text"] for k, v in written.items()} | {"held_out": "\n".join(held_out)}
    return AttributionResult(**out), texts


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
    books = (r.data or {}).get("books")
    if books:
        lines += [f"{len(books)} books, each split on its own (whole chapters held out):", "", *books_table(books)]
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
