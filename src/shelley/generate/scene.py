"""Whole scenes: about N words in the author's voice, past the model's trained window, guarded against copying.

A fine-tuned model saw the book as snippets of at most a paragraph, each closed by an end-of-text token, so
here end-of-text means "new paragraph", not "stop": the scene goes on in chunks of ``chunk_tokens`` tokens,
each continuing the most recent ``context_tokens`` tokens of prompt + scene (a rolling context, never past
the model's position limit). A base model never learned that use of end-of-text; for it paragraphs are
joined by a blank line, as in the text it was pretrained on (``paragraph_break``).

Three things steer the chunks:

* **the guard** (``index``, with ``original``): each chunk is checked against the corpus together with the
  model's text just before it. A copied span that grows past ``max_span`` words is cut where it starts and
  the scene is re-sampled from there (new seed, up to ``tries`` draws at that point), so one copy never
  throws the scene away and accepted text never changes.
* **beats**: sentences the scene must pass through in order. Beat ``i`` of ``k`` opens a new paragraph once
  the scene has about ``i / (k + 1)`` of its words, after the last full sentence; the model continues it.
* **the end**: the scene stops at the first sentence end at or past ``words``.

Text is handed out a paragraph at a time (``on_paragraph``) and, with ``on_progress``, after every chunk up
to the last sentence end: later cuts (to a sentence end before a beat or at the end) only remove text after
that point, so nothing shown is ever taken back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from shelley.config import GenerationConfig
from shelley.errors import ShelleyError
from shelley.generate.stream import common_prefix
from shelley.models.bos import bos_prefix

MIN_WORDS, MAX_WORDS = 100, 3000
DEFAULT_CONTEXT = 1024  # tokens of rolling context: a page and a half of prose
DEFAULT_CHUNK = 64  # tokens drawn between two guard checks
SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
BLANK_LINE = re.compile(r"\n\s*\n")
ParagraphBreak = Literal["eos", "newline"]


class TokenEngine(Protocol):
    """What the scene writer needs from a model: continue a token sequence."""

    position_limit: int

    def continue_ids(
        self, ids: list[int], max_new: int, *, seed: int, ban_eos: bool = False, on_token: Callable | None = None
    ) -> list[int]:
        """Up to ``max_new`` new token ids after ``ids``; the last is end-of-text when the model ended there."""
        ...


class TransformersEngine:
    """``continue_ids`` over a transformers model with the sampling of ``shelley write``. The KV cache of the
    previous call is kept and cropped to the prefix the next call shares with it, so a scene pays for a full
    prefill only when its rolling context moves, not on every chunk."""

    def __init__(self, model, tokenizer, gen: GenerationConfig) -> None:
        from shelley.generate import context_window, sampling_kwargs

        self.model, self.tokenizer = model, tokenizer
        self.position_limit = context_window(model)
        self.kwargs = sampling_kwargs(gen.model_copy(update={"stop": []}), tokenizer)
        self._cache = None
        self._cached: list[int] = []

    def continue_ids(self, ids, max_new, *, seed, ban_eos=False, on_token=None):
        import torch

        from shelley.models.decode import cache_arg

        shared = common_prefix(self._cached, ids)
        cache = self._reuse_cache(min(shared, len(ids) - 1))  # generate needs one new token at least
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        torch.manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new,
                min_new_tokens=1 if ban_eos else None,
                eos_token_id=eos,
                pad_token_id=pad,
                **{cache_arg(): cache},
                return_dict_in_generate=True,
                streamer=_token_streamer(on_token) if on_token else None,
                **self.kwargs,
            )
        self.model.train(was_training)
        seq = out.sequences[0].tolist()
        self._cache = getattr(out, cache_arg(), None)
        self._cached = seq[: self._cache.get_seq_length()] if self._cache is not None else []
        return seq[len(ids) :]

    def _reuse_cache(self, keep: int):
        if self._cache is None or keep <= 0:
            return None
        extra = self._cache.get_seq_length() - keep
        if extra > 0:
            # transformers 5 crops by a negative count (tokens to remove); a positive one is refused. A sliding-window
            # layer that has filled its window cannot roll back (RuntimeError): then the context is prefilled anew.
            try:
                self._cache.crop(-extra)
            except (AttributeError, ValueError, NotImplementedError, RuntimeError):
                return None
        return self._cache


def transformers_engine(model, tokenizer, gen: GenerationConfig) -> TokenEngine:
    """The token engine for a transformers model: ``stream.DecoderEngine`` where ``models.llama_decode`` runs the
    model (Llama-architecture, on the CPU, settings ``RowSampling`` draws), else ``TransformersEngine``."""
    from shelley.generate.stream import one_stream

    return one_stream(model, tokenizer, gen) or TransformersEngine(model, tokenizer, gen)


def _token_streamer(callback: Callable[[int], None]):
    """A transformers streamer that hands each new token id to ``callback`` (its first ``put`` is the prompt)."""
    from transformers.generation.streamers import BaseStreamer

    class TokenStreamer(BaseStreamer):
        def __init__(self) -> None:
            self.prompt_seen = False

        def put(self, value) -> None:
            if self.prompt_seen:
                for t in value.reshape(-1).tolist():
                    callback(t)
            self.prompt_seen = True

        def end(self) -> None:
            pass

    return TokenStreamer()


@dataclass
class Scene:
    """A written scene and the figures behind it (``to_json`` is what ``shelley write --words --json`` prints)."""

    prompt: str
    words_asked: int
    paragraphs: list[str]
    beats: list[str]
    beat_paragraphs: list[int]  # which paragraph each beat opens
    tokens: int  # tokens kept in the scene
    drawn_tokens: int  # tokens generated, re-sampled ones included
    seconds: float
    first_paragraph_s: float | None
    context_tokens: int
    paragraph_break: str
    guard: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def text(self) -> str:
        return "\n\n".join(self.paragraphs)

    @property
    def words(self) -> int:
        return len(self.text.split())

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out |= {
            "text": self.text,
            "words": self.words,
            "tokens_per_s": round(self.drawn_tokens / self.seconds, 2) if self.seconds else None,
        }
        return out


def prompt_room(position_limit: int, prefix: int = 0, context: int | None = None) -> int:
    """The most prompt tokens a scene can start from on a model with ``position_limit`` positions (what
    ``SceneWriter`` leaves after its chunk and ``prefix`` BOS tokens)."""
    chunk = min(DEFAULT_CHUNK, max(8, position_limit // 4))
    return min(context or DEFAULT_CONTEXT, position_limit - chunk - prefix) - chunk


def check_scene_request(words: int, beats: list[str]) -> None:
    if not MIN_WORDS <= words <= MAX_WORDS:
        raise ShelleyError(f"--words must be between {MIN_WORDS} and {MAX_WORDS} (got {words}); e.g. --words 1000")
    for i, b in enumerate(beats, 1):
        if not b.strip():
            raise ShelleyError(f"beat {i} is empty; give one sentence per line in the beats file")
    if len(beats) * 20 > words:
        raise ShelleyError(f"{len(beats)} beats need at least {20 * len(beats)} words; raise --words or cut beats")


class SceneWriter:
    """One scene: the token sequence (prompt + scene), what of it the model wrote, and the guard's counts."""

    def __init__(
        self,
        engine: TokenEngine,
        tokenizer,
        *,
        index=None,
        original: bool = False,
        max_span: int = 12,
        tries: int = 5,
        context_tokens: int | None = None,
        chunk_tokens: int = DEFAULT_CHUNK,
        seed: int = 1234,
        paragraph_break: ParagraphBreak = "eos",
        prefix_ids: list[int] | None = None,
        on_paragraph: Callable[[str], None] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        self.engine, self.tok = engine, tokenizer
        self.index = index if original else None
        self.max_span, self.tries, self.seed = max_span, tries, seed
        self.chunk = min(chunk_tokens, max(8, engine.position_limit // 4))  # a short-context model draws less
        self.eos = tokenizer.eos_token_id
        self.paragraph_break = paragraph_break
        self.sep = [self.eos] if paragraph_break == "eos" else self._encode("\n\n")
        # The BOS a model expects at the start of every window (``models.bos``), unless the caller says otherwise.
        self.prefix = bos_prefix(tokenizer) if prefix_ids is None else list(prefix_ids)
        self.note = on_note or (lambda _m: None)
        self.on_paragraph, self.on_progress = on_paragraph, on_progress
        self.context = self._fit_context(context_tokens)
        self.ids: list[int] = []
        self.scene_start = 0  # where the scene starts in ids (after the prompt)
        self.model_start = 0  # where the model's current run of text starts (after the prompt or the last beat)
        self.milestone = 0  # where the last beat or the start is: sentence cuts never go before it
        self.window_start = 0
        self.draws = 0
        self.drawn_tokens = 0
        self.resampled = 0
        self.gave_up: list[dict[str, Any]] = []
        self.beat_paragraphs: list[int] = []
        self.shown_chars = 0  # of the rendered scene text: handed out as progress
        self.paragraphs_out = 0
        self.t0 = time.perf_counter()
        self.first_paragraph_s: float | None = None
        self.ban_eos = True  # a scene never opens on an empty paragraph

    # ------------------------------------------------------------------ tokens and text

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _fit_context(self, asked: int | None) -> int:
        limit = self.engine.position_limit - self.chunk - len(self.prefix)
        want = asked or DEFAULT_CONTEXT
        if want > limit:
            if asked:
                self.note(f"context {asked} tokens clamped to {limit}: the model's position limit is "
                          f"{self.engine.position_limit} and a chunk needs {self.chunk}")  # fmt: skip
            want = limit
        if want < 2 * self.chunk:
            raise ShelleyError(
                f"the model's position limit ({self.engine.position_limit} tokens) leaves too little context for a "
                f"scene; use a model with a longer context"
            )
        return want

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def render(self, end: int | None = None) -> list[str]:
        """The scene's paragraphs (of ``ids`` up to ``end``): split at the paragraph token (eos mode) and at blank
        lines."""
        body = self.ids[self.scene_start : end]
        groups: list[list[int]] = [[]]
        for t in body:
            if t == self.eos:
                groups.append([])
            else:
                groups[-1].append(t)
        paras = []
        for g in groups:
            for p in BLANK_LINE.split(self._decode(g)):
                p = " ".join(p.split())
                if p:
                    paras.append(p)
        return paras

    def scene_text(self, end: int | None = None) -> str:
        return "\n\n".join(self.render(end))

    def word_count(self) -> int:
        return len(self.scene_text().split())

    def _window(self) -> list[int]:
        """The rolling context: the most recent tokens, moved on by a quarter window at a time (so the KV cache
        of the last chunk stays usable in between), starting after a paragraph break where one is near."""
        self.window_start = min(self.window_start, max(0, len(self.ids) - self.chunk))  # after a cut back
        if len(self.ids) - self.window_start > self.context:
            start = len(self.ids) - (3 * self.context) // 4
            breaks = [i + len(self.sep) for i in range(start, start + self.context // 4) if self._break_at(i)]
            self.window_start = breaks[0] if breaks else start
        return self.prefix + self.ids[self.window_start :]

    def _break_at(self, i: int) -> bool:
        return self.ids[i : i + len(self.sep)] == self.sep

    def _cut_index(self, ids_before: list[int], new: list[int], chars: int, k: int = 0) -> int:
        """How many tokens of ``new`` keep ``decode(ids_before + new[:k])`` within ``chars`` characters (counting
        on from ``k``, a count known to fit)."""
        while k < len(new) and len(self._decode(ids_before + new[: k + 1])) <= chars:
            k += 1
        return k

    # ------------------------------------------------------------------ drawing chunks

    def _draw(self, n: int) -> list[int]:
        self.draws += 1
        new = self.engine.continue_ids(self._window(), n, seed=self.seed + 7919 * self.draws, ban_eos=self.ban_eos)
        self.drawn_tokens += len(new)
        self.ban_eos = False
        if new and new[-1] == self.eos:
            new = new[:-1]
            if not new and (len(self.ids) == self.model_start or self._ends_with_break()):
                self.ban_eos = True  # an empty paragraph: draw again with end-of-text banned once
            else:
                new = new + self.sep
        return new

    def _ends_with_break(self) -> bool:
        return len(self.ids) >= len(self.sep) and self.ids[-len(self.sep) :] == self.sep

    def _guard_tail(self) -> list[int]:
        """The model's own text just before the next chunk: enough that a copy running into it is caught."""
        return self.ids[max(self.model_start, len(self.ids) - 4 * self.max_span - 16) :]

    def chunk_step(self, n: int | None = None) -> None:
        """Draw one chunk and accept it, re-sampling from where a too-long copy starts (the guard)."""
        n = n or self.chunk
        tries = 0
        while True:
            new = self._draw(n)
            tail = self._guard_tail()
            hit = self._copy_in(tail, new) if self.index is not None else None
            if hit is None:
                return self._accept(new)
            tries += 1
            keep = self._cut_index(tail, new, hit[0])
            if tries >= self.tries:
                self.gave_up.append({"at_word": self.word_count(), "span": hit[1]})
                self.note(f"gave up re-sampling a {hit[1]}-word copy after {self.tries} tries; raise --tries")
                return self._accept(new)
            self.resampled += 1
            self._accept(new[:keep])

    def _copy_in(self, tail: list[int], new: list[int]) -> tuple[int, int] | None:
        return self.index.overlong_copy(self._decode(tail + new), self.max_span, start=len(self._decode(tail)))

    def _accept(self, new: list[int]) -> None:
        self.ids.extend(new)
        self._hand_out(final=False)

    # ------------------------------------------------------------------ milestones

    def grow_to(self, words: int) -> None:
        while self.word_count() < words:
            before = len(self.ids)
            self.chunk_step()
            if self.on_progress:
                self.on_progress(self.progress())
            if len(self.ids) == before and self.draws > 1000:  # pragma: no cover - a model that never writes
                raise ShelleyError("the model keeps ending the scene with nothing written; try another model")

    def _sentence_ends(self) -> list[int]:
        """Positions in ``ids`` after which the model's text ends a sentence: in the last few chunks (where a cut
        is wanted), else anywhere after the last milestone."""
        for start in (max(self.milestone, len(self.ids) - 4 * self.chunk), self.milestone):
            seg = self.ids[start:]
            ends = sorted({m.end() for m in SENTENCE_END.finditer(self._decode(seg))})
            out, k = [], 0
            for e in ends:
                k = self._cut_index([], seg, e, k)
                if k > 0:
                    out.append(start + k)
            if out or start == self.milestone:
                return out
        return []

    def cut_to_sentence(self, at_least_words: int | None = None, extra_chunks: int = 3) -> None:
        """Cut the scene at a sentence end: the first one at or past ``at_least_words`` words (drawing up to
        ``extra_chunks`` more chunks to reach one), else the last one there is."""
        for attempt in range(extra_chunks + 1):
            ends = self._sentence_ends()
            if at_least_words is None:
                if ends:
                    del self.ids[ends[-1] :]
                    return
            else:
                for end in ends:
                    if len(self.scene_text(end).split()) >= at_least_words:
                        del self.ids[end:]
                        return
            if attempt < extra_chunks:
                self.chunk_step()
        ends = self._sentence_ends()
        # No sentence end past the length: the last one before it, unless that drops over a fifth of the scene.
        if ends and len(self.scene_text(ends[-1]).split()) >= 0.8 * (at_least_words or 0):
            del self.ids[ends[-1] :]

    def add_beat(self, beat: str) -> None:
        if self.ids[self.scene_start :] and not self._ends_with_break():
            self.ids.extend(self.sep)
        self.beat_paragraphs.append(len(self.render()))
        self.ids.extend(self._encode(" ".join(beat.split())))
        self.model_start = self.milestone = len(self.ids)

    # ------------------------------------------------------------------ handing text out

    def progress(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.t0
        return {
            "words": self.word_count(),
            "tokens": len(self.ids) - self.scene_start,
            "drawn_tokens": self.drawn_tokens,
            "seconds": elapsed,
            "tokens_per_s": self.drawn_tokens / elapsed if elapsed else 0.0,
            "text": self.scene_text()[: self.shown_chars],
        }

    def _hand_out(self, *, final: bool) -> None:
        """Hand out text up to the last sentence end (everything when ``final``): whole paragraphs to
        ``on_paragraph``, the shown prefix to progress."""
        paras = self.render()
        text = "\n\n".join(paras)
        if final:
            self.shown_chars = len(text)
        else:
            ends = [m.end() for m in SENTENCE_END.finditer(text)]
            self.shown_chars = max(self.shown_chars, ends[-1] if ends else 0)
        done = len(paras) if final else max(0, len(paras) - 1)
        if done and self.first_paragraph_s is None:
            self.first_paragraph_s = time.perf_counter() - self.t0
        while self.paragraphs_out < done:
            if self.on_paragraph:
                self.on_paragraph(paras[self.paragraphs_out])
            self.paragraphs_out += 1

    # ------------------------------------------------------------------ the whole scene

    def start(self, prompt: str) -> None:
        ids = self._encode(prompt) if prompt.strip() else []
        if len(ids) > self.context - self.chunk:
            raise ShelleyError(
                f"the prompt has {len(ids)} tokens, more than the {self.context - self.chunk} a {self.context}-token "
                "context leaves room for; shorten the prompt or raise --context"
            )
        if not ids and not self.prefix:  # no prompt: start as a new document does, after a start token
            bos = self.tok.bos_token_id
            ids = [bos if bos is not None else self.eos]
        self.ids = list(ids)
        self.scene_start = self.model_start = self.milestone = len(self.ids)

    def finish(self, prompt: str, words_asked: int, beats: list[str], *, interrupted: bool) -> Scene:
        self._hand_out(final=True)
        seconds = time.perf_counter() - self.t0
        return Scene(
            prompt=prompt,
            words_asked=words_asked,
            paragraphs=self.render(),
            beats=beats,
            beat_paragraphs=self.beat_paragraphs,
            tokens=len(self.ids) - self.scene_start,
            drawn_tokens=self.drawn_tokens,
            seconds=seconds,
            first_paragraph_s=self.first_paragraph_s if self.first_paragraph_s is not None else seconds,
            context_tokens=self.context,
            paragraph_break=self.paragraph_break,
            guard={
                "on": self.index is not None,
                "max_span": self.max_span,
                "resampled": self.resampled,
                "gave_up": self.gave_up,
            },
            interrupted=interrupted,
        )


def write_scene(
    engine: TokenEngine,
    tokenizer,
    prompt: str,
    words: int,
    *,
    beats: list[str] | None = None,
    index=None,
    original: bool = False,
    max_span: int = 12,
    tries: int = 5,
    context_tokens: int | None = None,
    chunk_tokens: int = DEFAULT_CHUNK,
    seed: int = 1234,
    paragraph_break: ParagraphBreak = "eos",
    prefix_ids: list[int] | None = None,
    on_paragraph: Callable[[str], None] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Scene:
    """Write a scene of about ``words`` words after ``prompt`` (see the module docstring). Ctrl-C returns the
    scene written so far, flagged ``interrupted``. With an ``index`` the scene's longest copied span is
    reported (and with ``original`` guarded)."""
    beats = list(beats or [])
    check_scene_request(words, beats)
    w = SceneWriter(
        engine, tokenizer, index=index, original=original, max_span=max_span, tries=tries,
        context_tokens=context_tokens, chunk_tokens=chunk_tokens, seed=seed, paragraph_break=paragraph_break,
        prefix_ids=prefix_ids, on_paragraph=on_paragraph, on_progress=on_progress, on_note=on_note,
    )  # fmt: skip
    for b in beats:
        if len(w._encode(b)) > w.context // 2:
            raise ShelleyError(f"a beat is longer than half the {w.context}-token context; split it into shorter beats")
    w.start(prompt)
    interrupted = False
    try:
        for i, beat in enumerate(beats):
            w.grow_to(round(words * (i + 1) / (len(beats) + 1)))
            w.cut_to_sentence()
            w.add_beat(beat)
        w.grow_to(words)
        w.cut_to_sentence(at_least_words=words)
    except KeyboardInterrupt:
        interrupted = True
    scene = w.finish(prompt, words, beats, interrupted=interrupted)
    if index is not None:
        scene.guard |= scene_originality(index, scene)
    return scene


def scene_originality(index, scene: Scene) -> dict[str, Any]:
    """The longest span the model's own text copies from the corpus (beats, the user's words, left out)."""
    parts = _model_parts(scene)
    checks = [index.check(p) for p in parts if p.strip()]
    if not checks:
        return {"longest_span": 0, "ngram_share": 0.0, "location": None}
    worst = max(checks, key=lambda c: c["longest_span"])
    grams = sum(max(0, c["words"] - c["ngram_n"] + 1) for c in checks)
    shared = sum(c["ngram_share"] * max(0, c["words"] - c["ngram_n"] + 1) for c in checks)
    return {"longest_span": worst["longest_span"], "ngram_share": shared / grams if grams else 0.0,
            "location": worst["location"]}  # fmt: skip


def _model_parts(scene: Scene) -> list[str]:
    """The scene's text between beats, each beat's own words removed."""
    parts, current = [], []
    for i, p in enumerate(scene.paragraphs):
        if i in scene.beat_paragraphs:
            parts.append("\n\n".join(current))
            beat = scene.beats[scene.beat_paragraphs.index(i)]
            current = [p[len(" ".join(beat.split())) :]] if p.startswith(" ".join(beat.split())) else [p]
        else:
            current.append(p)
    parts.append("\n\n".join(current))
    return parts


def scene_engine(loaded, fast, gen: GenerationConfig) -> TokenEngine:
    """The token engine for a model ``load_writer`` loaded: llama.cpp's when ``fast`` is set, else transformers'."""
    return fast.scene_engine(gen) if fast is not None else transformers_engine(loaded.model, loaded.tokenizer, gen)


def paragraph_break_for(run) -> ParagraphBreak:
    """A model shelley trained learned end-of-text as the end of a snippet (a paragraph): ``eos``. Any other
    model reads a blank line as a paragraph break."""
    return "eos" if run is not None else "newline"


def read_beats(path) -> list[str]:
    """The beats file: one sentence per line, blank lines skipped."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ShelleyError(f"beats file not found: {path}; give a text file with one beat (a sentence) per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ShelleyError(f"beats file {path} is not UTF-8 text; save it as UTF-8") from None
    beats = [" ".join(line.split()) for line in lines if line.strip()]
    if not beats:
        raise ShelleyError(f"beats file {path} is empty; write one beat (a sentence) per line")
    return beats
