"""The evaluation of a run, once for ``shelley run`` and ``shelley eval``: base and fine-tuned scored on the same
validation tokens (perplexity, bits per byte), their generations, originality, the who-wrote-this test, whole
scenes and the author's unseen books, as typed results (``records.EvalResult``). ``report`` renders them."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shelley.config import ShelleyConfig
from shelley.corpus import Corpus
from shelley.errors import ShelleyError
from shelley.eval.heldout import book_curve, book_stream, judge_book
from shelley.models.bos import bos_prefix
from shelley.records import AttributionResult, EvalResult, SceneResult, TrainResult
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

    ppl = validation_perplexity(model, tokenizer, stream, cfg)
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
    ppl = validation_perplexity(model, tokenizer, stream, cfg)
    voice = voice_text(model, tokenizer, cfg, bags, who, on_progress, side_by_side=cfg.eval.samples_per_prompt)
    voice["shared"] = True
    seconds = round(voice["seconds"], 2)
    return {"perplexity": ppl, "generations": voice.pop("side_by_side"), "generation_seconds": seconds, "voice": voice}


def validation_perplexity(model, tokenizer, stream: np.ndarray, cfg: ShelleyConfig) -> dict[str, Any]:
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

    corpus = run.corpus()
    index = run_index(run)
    train_texts, held_out = corpus.train, corpus.validation
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


class Evaluation:
    """The evaluation ``shelley run`` and ``shelley eval`` both carry out, in two halves around the fine-tuned
    model: ``score("base", model)``, then (after training, or after loading the trained model)
    ``score("finetuned", model)``, then ``finish(training)`` judges both into one ``EvalResult``.

    Each ``score`` gives back what it measured and how long it took (perplexity, generations, the attribution
    text, the scene pass), which ``shelley run`` reads to fit training into its budget. What the two commands
    ask for differs only in the arguments: ``identity`` (the corpus's author, ``data.corpus.with_identity``),
    ``voice`` (the who-wrote-this test, None: no bags) and ``bags``;
    ``voice_skipped`` (why there is no test, for the report); ``scenes``/``scene_words``/``scene_engine`` and
    ``scene_test`` (the test that attributes scenes); ``books`` (held-out books of the author, ``eval.heldout``);
    ``prompted`` (the prompted baseline's text) and ``curve`` (the bag-size curve), which only ``shelley eval``
    spends time on."""

    def __init__(
        self,
        cfg: ShelleyConfig,
        run: Run,
        corpus: Corpus,
        stream: np.ndarray,
        tokenizer,
        *,
        identity=None,
        voice=None,
        bags: int = 0,
        voice_skipped: str | None = None,
        scenes: int | None = None,
        scene_words: int = 1000,
        scene_engine: Callable | None = None,
        scene_test=None,
        scenes_skipped: str | None = None,
        books: list | None = None,
        prompted: bool = False,
        curve: bool = False,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.cfg, self.run, self.corpus, self.stream, self.tokenizer = cfg, run, corpus, stream, tokenizer
        self.identity = identity
        self.voice, self.bags, self.voice_skipped = voice, bags if voice is not None else 0, voice_skipped
        self.scenes, self.scene_words, self.scene_engine = scenes, scene_words, scene_engine
        self.scene_test, self.scenes_skipped = scene_test, scenes_skipped
        self.books, self.curves = books or [], [{} for _ in books or []]
        self.prompted, self.curve, self.on_progress = prompted, curve, on_progress
        self.scored: dict[str, dict[str, Any]] = {}
        self.passes: dict[str, Any] = {}
        self.written: dict[str, dict] = {}

    def score(self, who: str, model) -> dict[str, Any]:
        """Score ``model`` as ``who`` ("base" or "finetuned"): perplexity and bits per byte on the validation
        tokens, the side-by-side generations, the attribution text, the scene pass and the held-out books' curves,
        each timed. Returns the scores (``scene_seconds`` among them when scenes were written)."""
        cfg, tok = self.cfg, self.tokenizer
        scored = score_with_voice(model, tok, self.stream, cfg, self.bags, who, self.on_progress)
        t0 = time.perf_counter()
        run = self.run if who == "finetuned" else None
        self.passes[who] = scene_model_pass(
            model, tok, cfg, self.stream, run, self.scenes, self.scene_words, self.scene_engine, self.on_progress
        )
        if self.passes[who] is not None:
            scored["scene_seconds"] = time.perf_counter() - t0
        _book_curves(self.books, self.curves, who, model, tok)
        if self.voice is not None:
            self.written[who] = scored["voice"]
        asked = who == "base" and self.voice is not None and self.prompted
        if asked and (text := prompted_voice(model, tok, cfg, self.bags, self.on_progress)) is not None:
            self.written["prompted"] = text
        self.scored[who] = scored
        return scored

    def finish(self, training: TrainResult | None) -> tuple[EvalResult, dict[str, str] | None]:
        """Both models judged: the report's core (``combine``), originality and style (``judge``), the held-out
        books, the attribution test and the scenes. Returns the result and the texts the attribution and scenes
        read (None without them), which ``write_eval`` keeps for ``shelley ab``."""
        cfg, run, corpus = self.cfg, self.run, self.corpus
        results = judge(combine(cfg, self.scored["base"], self.scored["finetuned"], training), run, cfg)
        results.run_dir = str(run.root)
        results.heldout_books = [judge_book(info, c) for (_, info), c in zip(self.books, self.curves, strict=True)]
        results.heldout_books = results.heldout_books or None
        texts = None
        if self.voice is not None:
            results.attribution, texts = attribution_results(self.voice, self.written, corpus.validation, self.bags)
            if self.curve:
                results.attribution.curve = _bag_size_curve(self.identity, corpus, self.written, self.voice, cfg)
        elif self.voice_skipped:
            results.attribution_skipped = self.voice_skipped
        if self.passes.get("base") is not None:
            scene_texts = judge_scene_passes(
                results, run, self.passes, corpus.train, corpus.validation, self.scene_words, self.scene_test
            )
            texts = (texts or {}) | {"scenes": scene_texts}
        elif self.scenes_skipped:
            results.scenes_skipped = self.scenes_skipped
        return results, texts


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
    from shelley.data.corpus import with_identity
    from shelley.generate.load import load_model_dir

    corpus, out = run.corpus(), run.output
    cfg, who = with_identity(run.config(), corpus)
    if bag_words:
        cfg.eval.bag_words = bag_words
    cfg.eval.keep_names = keep_names or cfg.eval.keep_names
    if prompts is not None and prompts[1]:
        cfg.eval.prompts = [p.prompt for p in prompts[1]]
    voice = test = None
    if attribution_bags:
        from shelley.eval.voice import attribution_test_for

        # Before any generation: a missing reference set must fail in a second, not after minutes of sampling.
        voice = attribution_test_for(cfg, who, corpus.train, corpus.validation, reference_dir, corpus=corpus.source)
    if scenes:  # scenes are attributed (one scene, one bag) where a reference set is there, --attribution or not
        test = voice or _optional_test(cfg, who, corpus, reference_dir)
    stream = cached_stream(run)
    base_model, tokenizer = _base_for_eval(cfg, out)
    books = [book_stream(b, tokenizer, cfg.data, corpus.train, run.cache_dir) for b in heldout_books or []]
    flow = Evaluation(
        cfg, run, corpus, stream, tokenizer, identity=who, voice=voice, bags=attribution_bags or 0, scenes=scenes,
        scene_words=scene_words, scene_engine=scene_engine, scene_test=test, books=books, prompted=True, curve=True,
        on_progress=on_progress,
    )  # fmt: skip
    flow.score("base", base_model)
    del base_model
    flow.score("finetuned", load_model_dir(out, trust_remote_code=cfg.model.trust_remote_code))
    results, texts = flow.finish(run.train_result())
    if cfg.train.method == "scratch":
        _scratch_baselines(results, run, stream, cfg, len(tokenizer))
    if prompts is not None:
        from shelley.eval.prompts import score_expectations

        checked = score_expectations(results.generations, prompts[1]) if prompts[1] else {}
        results.prompt_set = {"name": prompts[0]} | checked
    return results, texts


def _book_curves(books: list, curves: list[dict], who: str, model, tokenizer) -> list[dict]:
    """Each held-out book's context curve for ``who`` (base or finetuned), added to ``curves``."""
    from shelley.generate import context_window

    prefix = bos_prefix(tokenizer)
    for (stream, _), c in zip(books, curves, strict=True):
        c[who] = book_curve(model, stream, prefix, min(1024, context_window(model) - len(prefix)))
    return curves


def _optional_test(cfg: ShelleyConfig, who, corpus: Corpus, reference_dir):
    from shelley.eval.voice import optional_attribution_test

    return optional_attribution_test(cfg, who, corpus.train, corpus.validation, reference_dir, corpus=corpus.source)[0]


def _per_bag(counts: list[int]) -> dict[str, Any]:
    """How many separate generations made up the bags: fewest, median, most."""
    if not counts:
        return {}
    ordered = sorted(counts)
    return {"generations_per_bag": [ordered[0], ordered[len(ordered) // 2], ordered[-1]]}


def _bag_size_curve(who, corpus: Corpus, written: dict[str, dict], voice, cfg):
    """The attribution's shares at 500 to 5,000 words per bag, for the generated texts (see ``bag_size_curve``)."""
    from shelley.eval.voice import bag_size_curve

    texts = {who_: w["text"] for who_, w in written.items()}
    return bag_size_curve(
        who, corpus.train, corpus.validation, texts, voice.reference or None, corpus=corpus.source,
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
