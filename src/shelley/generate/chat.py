"""``shelley chat MODEL``: an interactive loop over any model shelley can load.

Two modes, picked from the tokenizer unless ``--mode`` says otherwise:

* ``chat``: the tokenizer has shelley's role tokens (a scratch GPT trained with chat sources). Each turn is
  ``<|user|> ... <|assistant|> ...``; a reply ends at end-of-text or when the model starts a new user turn.
* ``continue``: co-writing. The story so far is the prompt; you write a line, the model carries it on, and
  both stay in the story (the fine-tuned novel model is used this way).

The conversation is kept inside the model's context window: the oldest turns are dropped first, and a single
overlong turn keeps its most recent tokens. Commands: ``/temp X``, ``/topp X``, ``/topk N``, ``/len N``,
``/reset``, ``/help``, ``/quit``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from shelley.config import GenerationConfig
from shelley.data.sources import ASSISTANT, USER, chat_turn
from shelley.errors import ShelleyError

HELP = (
    "commands: /temp X (temperature, 0 = greedy), /topp X (nucleus mass), /topk N, /len N (tokens per reply), "
    "/scene N (co-writing: carry the story on for a whole scene of about N words), /reset (forget the "
    "conversation), /help, /quit"
)
SCENE_WORDS = 1000  # /scene with no number
Mode = Literal["chat", "continue"]


def detect_mode(tokenizer) -> Mode:
    """``chat`` when the tokenizer knows both role tokens as single special tokens, else ``continue``."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    return "chat" if {USER, ASSISTANT} <= specials else "continue"


@dataclass
class ChatSession:
    model: object
    tokenizer: object
    gen: GenerationConfig
    mode: Mode = "continue"
    turns: list[tuple[str, str]] = field(default_factory=list)  # (what you wrote, what the model wrote)
    engine: object = None  # a generate.llamacpp.LlamaCppWriter running the exported GGUF (None: transformers)
    paragraph_break: str = "newline"  # how /scene breaks paragraphs: "eos" for a model shelley trained
    # transformers replies through the one-stream decoder where it runs the model (``stream.DecoderEngine``): its
    # cache stays between turns, so a turn reads only what is new in the story. None: not yet asked; False: no.
    _stream: object = field(default=None, repr=False)

    # ------------------------------------------------------------------ prompt building

    def _render(self, turns: list[tuple[str, str]], pending: str) -> str:
        if self.mode == "chat":
            done = "".join(chat_turn(u, a) + "\n" for u, a in turns)
            return f"{done}{USER}\n{pending.strip()}\n{ASSISTANT}\n"
        return "".join(u + a for u, a in turns) + pending

    def _n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, message: str) -> tuple[str, int]:
        """The prompt for ``message`` and how many old turns had to be dropped to fit the context window."""
        from shelley.generate import context_window

        window = self.engine.context if self.engine is not None else context_window(self.model)
        budget = window - self.gen.max_new_tokens
        turns = list(self.turns)
        dropped = 0
        while turns and self._n_tokens(self._render(turns, message)) > budget:
            turns.pop(0)  # oldest first; what was said last matters most for what comes next
            dropped += 1
        return self._render(turns, message), dropped

    # ------------------------------------------------------------------ one exchange

    def reply(self, message: str, *, stream: bool = True, on_note: Callable[[str], None] | None = None) -> str:
        if self.mode == "continue" and self.turns and message and not message[0].isspace():
            message = " " + message  # continue the story as one text, not glued words
        prompt, dropped = self.prompt(message)
        if dropped and on_note:
            on_note(f"(context full: forgot the {dropped} oldest turn{'s' * (dropped > 1)})")
        gen = self.gen.model_copy(update={"num_samples": 1})
        if self.engine is not None:
            text = self._engine_reply(prompt, gen, stream, on_note)
        else:
            text = self._model_reply(prompt, gen, stream, on_note)
        if self.mode == "chat":
            text = text.strip()
        self.turns.append((message, text))
        return text

    def _engine_reply(self, prompt: str, gen: GenerationConfig, stream: bool, on_note) -> str:
        import sys

        def show(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        stops = [*gen.stop, USER] if self.mode == "chat" else list(gen.stop)
        gen = gen.model_copy(update={"seed": self.gen.seed + len(self.turns), "stop": stops})
        return self.engine.generate([prompt], gen, on_note=on_note, on_text=show if stream else None)[0]

    def _model_reply(self, prompt: str, gen: GenerationConfig, stream: bool, on_note) -> str:
        from shelley.generate import generate_texts

        streamer = None
        if stream:
            from transformers import TextStreamer

            streamer = TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop_ids = []
        if self.mode == "chat":
            stop_ids = [self.tokenizer.convert_tokens_to_ids(USER)]
        return generate_texts(
            self.model,
            self.tokenizer,
            [prompt],
            gen,
            seed=self.gen.seed + len(self.turns),  # reproducible, but not the same reply every turn
            on_note=on_note,
            streamer=streamer,
            extra_stop_ids=stop_ids,
            stream=self._stream_engine(gen),
        )[0]

    def _stream_engine(self, gen: GenerationConfig):
        """The session's ``DecoderEngine`` (made once), or None where the decoder does not run the model."""
        from shelley.generate.stream import one_stream

        if self._stream is None:
            self._stream = one_stream(self.model, self.tokenizer, gen) or False
        return self._stream or None

    # ------------------------------------------------------------------ a whole scene

    def scene(self, words: int, *, on_paragraph=None, on_note=None) -> str:
        """Carry the story on for a scene of about ``words`` words (``generate.scene``): the story so far is the
        prompt, cut to its most recent tokens when it is longer than the scene's context leaves room for."""
        from shelley.generate.scene import prompt_room, transformers_engine, write_scene
        from shelley.models.bos import bos_prefix

        if self.mode != "continue":
            raise ShelleyError("/scene co-writes a story; it needs continue mode (shelley chat --mode continue)")
        engine = self.engine.scene_engine(self.gen) if self.engine is not None else None
        engine = engine or transformers_engine(self.model, self.tokenizer, self.gen)
        story = self._render(self.turns, "")
        room = prompt_room(engine.position_limit, len(bos_prefix(self.tokenizer))) - 8  # re-encoding may add a few
        ids = self.tokenizer(story, add_special_tokens=False)["input_ids"]
        if len(ids) > room:
            story = self.tokenizer.decode(ids[-room:])
        scene = write_scene(
            engine, self.tokenizer, story, words, seed=self.gen.seed + len(self.turns),
            paragraph_break=self.paragraph_break, on_paragraph=on_paragraph, on_note=on_note,
        )  # fmt: skip
        self.turns.append(("", ("\n\n" if story.strip() else "") + scene.text))
        return scene.text

    def scene_command(self, arg: str, show, on_note=None) -> str:
        """``/scene [N]``: write the scene, each paragraph to ``show`` as it is finished; returns the line to say."""
        from shelley.generate.scene import MAX_WORDS, MIN_WORDS

        try:
            words = int(arg) if arg else SCENE_WORDS
        except ValueError:
            return f"/scene needs a number of words from {MIN_WORDS} to {MAX_WORDS} (got {arg!r})"
        if not MIN_WORDS <= words <= MAX_WORDS:
            return f"/scene needs a number of words from {MIN_WORDS} to {MAX_WORDS} (got {words})"
        text = self.scene(words, on_paragraph=lambda p: show(p + "\n\n"), on_note=on_note)
        return f"(scene: {len(text.split())} words)"

    # ------------------------------------------------------------------ commands

    def command(self, line: str) -> tuple[bool, str]:
        """Run a ``/command``; returns (keep going, message to show)."""
        name, _, arg = line.strip().partition(" ")
        name, arg = name.lower(), arg.strip()
        if name in ("/quit", "/exit", "/q"):
            return False, "bye"
        if name == "/reset":
            self.turns.clear()
            return True, "conversation reset"
        if name == "/help":
            return True, HELP
        setters = {
            "/temp": ("temperature", float),
            "/topp": ("top_p", float),
            "/topk": ("top_k", int),
            "/len": ("max_new_tokens", int),
        }
        if name not in setters:
            return True, f"unknown command {name}; {HELP}"
        key, cast = setters[name]
        from pydantic import ValidationError

        try:
            setattr(self.gen, key, cast(arg))
        except (ValueError, ValidationError):
            now = getattr(self.gen, key)
            return True, f"{name} needs a valid {cast.__name__} (got {arg!r}); {key} stays {now}"
        return True, f"{key} = {getattr(self.gen, key)}"


def run_repl(
    session: ChatSession,
    *,
    read: Callable[[str], str] = input,
    say: Callable[[str], None] = print,
    write: Callable[[str], None] | None = None,
) -> int:
    """Read lines until /quit or end of input; returns the number of replies given."""
    replies = 0
    say(f"shelley chat ({session.mode} mode) · {HELP}")
    while True:
        try:
            line = read("you> ")
        except EOFError:
            say("bye")
            return replies
        if not line.strip():
            continue
        if line.lstrip().lower().startswith("/scene"):
            try:
                say(session.scene_command(line.strip()[6:].strip(), write or say, on_note=say))
            except ShelleyError as exc:
                say(str(exc))
            replies += 1
            continue
        if line.lstrip().startswith("/"):
            keep, msg = session.command(line)
            say(msg)
            if not keep:
                return replies
            continue
        if write:
            write("shelley> ")
        session.reply(line, stream=True, on_note=say)  # the streamer ends the reply with a newline
        replies += 1


def check_mode(mode: str, tokenizer) -> Mode:
    if mode == "auto":
        return detect_mode(tokenizer)
    if mode == "chat" and detect_mode(tokenizer) != "chat":
        raise ShelleyError(
            "--mode chat needs a tokenizer with <|user|>/<|assistant|> tokens (a scratch GPT's); "
            "use --mode continue to co-write with this model"
        )
    if mode not in ("chat", "continue"):
        raise ShelleyError(f"--mode {mode!r} is not one of auto, chat, continue")
    return mode  # type: ignore[return-value]
