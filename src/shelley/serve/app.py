"""``shelley serve MODEL``: a Gradio page to write with a model: prompt, sampling sliders, seed, a "keep it
original" toggle backed by the originality guard, streamed output, and the run's key numbers.

It binds 127.0.0.1 unless told otherwise. With transformers, every request goes to one batcher
(``generate.batch.batch_writer``: shelley's own decoder for Llama-architecture models, ``generate`` for the
rest): readers who press Generate while the model is busy join its next batch (a chunk of 16 tokens later), so
fifty readers share the two cores as one batch instead of queueing one by one, and a full queue answers "busy,
try again in N s". With llama.cpp the same queue runs on ``generate.llamacpp.LlamaCppBatchWriter``:
one llama.cpp context, every reader a sequence of it, one batch a step.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelley.config import GenerationConfig
from shelley.errors import ShelleyError
from shelley.records import EvalResult
from shelley.run import Run

MAX_TOKENS_LIMIT = 400  # per request: a demo answers in seconds, not minutes
MAX_SCENE_WORDS = 2000  # a scene request: about a minute and a half of one core's writing


@dataclass
class Demo:
    model: Any
    tokenizer: Any
    gen: GenerationConfig
    index: Any = None  # originality index over the training corpus (None: the toggle is hidden)
    max_span: int = 12
    facts: str = ""  # markdown: the run's measured numbers
    placeholder: str = "Write the opening of a scene"  # the run's first eval prompt, when it has one
    engine: Any = None  # LlamaCppWriter (the exported GGUF) or BatchWriter (transformers, batched); None: plain
    paragraph_break: str = "newline"  # how scenes break paragraphs: "eos" for a model shelley trained

    def clamp(self, max_tokens: float | int | None) -> tuple[int, list[str]]:
        from shelley.generate import context_window

        notes = []
        window = self.engine.context if self.engine is not None else context_window(self.model)
        limit = min(MAX_TOKENS_LIMIT, window - 1)
        n = int(max_tokens or 0)
        if n < 1 or n > limit:
            notes.append(f"max tokens {n} is out of range; clamped to {min(max(n, 1), limit)} (1 to {limit})")
            n = min(max(n, 1), limit)
        return n, notes

    def settings(self, temperature: float, top_p: float, max_tokens: int, seed: int) -> GenerationConfig:
        t = min(max(float(temperature), 0.0), 2.0)
        p = min(max(float(top_p), 0.05), 1.0)
        return self.gen.model_copy(
            update={"temperature": t, "top_p": p, "max_new_tokens": max_tokens, "seed": int(seed), "num_samples": 1}
        )

    def generate(
        self, prompt: str, temperature: float, top_p: float, max_tokens: int, seed: int, original: bool
    ) -> Iterator[tuple[str, str]]:
        """Yield (text so far, notes) as tokens arrive; with ``original`` yield once, after the guard."""
        n, notes = self.clamp(max_tokens)
        prompt = prompt or ""
        if not prompt.strip():
            notes.append("empty prompt: writing from nothing (type an opening line to steer it)")
            prompt = ""
        gen = self.settings(temperature, top_p, n, seed)
        if original and self.index is not None:
            from shelley.generate.write import write

            r = write(
                self.model,
                self.tokenizer,
                [prompt],
                gen,
                index=self.index,
                original=True,
                max_span=self.max_span,
                on_note=notes.append,
                engine=self.engine,
            )[0]
            o = r["originality"]
            notes.append(f"longest copied span {o['longest_span']} words after {r['tries']} draw(s)")
            yield r["text"], " · ".join(notes)
            return
        pieces, result, thread = self._stream(prompt, gen, notes)
        text = ""
        for piece in pieces:
            text += piece
            yield text, " · ".join(notes)
        thread.join()
        if "error" in result:
            raise ShelleyError(f"generation failed: {result['error']}")
        final = result.get("text", text)
        if self.index is not None and final:
            notes.append(f"longest copied span {self.index.check(final)['longest_span']} words")
        yield final, " · ".join(notes)

    def scene(
        self, prompt: str, words: float, beats: str, temperature: float, top_p: float, seed: int, original: bool
    ) -> Iterator[tuple[str, str]]:
        """Scene mode: yield (scene so far, notes) after every chunk, up to its last full sentence, then the whole
        scene with its figures. ``beats``: one sentence per line, in order."""
        import queue

        from shelley.generate.scene import MIN_WORDS, transformers_engine, write_scene

        notes: list[str] = []
        n = int(words or 0)
        if not MIN_WORDS <= n <= MAX_SCENE_WORDS:
            notes.append(f"words {n} out of range; clamped to {min(max(n, MIN_WORDS), MAX_SCENE_WORDS)}")
            n = min(max(n, MIN_WORDS), MAX_SCENE_WORDS)
        gen = self.settings(temperature, top_p, self.gen.max_new_tokens, seed)
        engine = self.engine.scene_engine(gen) if self.engine is not None else None
        engine = engine or transformers_engine(self.model, self.tokenizer, gen)
        beat_list = [" ".join(b.split()) for b in (beats or "").splitlines() if b.strip()]
        updates: queue.Queue = queue.Queue()
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["scene"] = write_scene(
                    engine, self.tokenizer, prompt or "", n, beats=beat_list, index=self.index,
                    original=original and self.index is not None, max_span=self.max_span, seed=int(seed),
                    paragraph_break=self.paragraph_break, on_progress=updates.put, on_note=notes.append,
                )  # fmt: skip
            except Exception as exc:  # surfaced below as a message, not a stack trace
                result["error"] = exc
            finally:
                updates.put(None)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        opening = (prompt or "").strip()

        def whole(text: str) -> str:  # the reader's opening, then the scene that carries it on
            return f"{opening} {text}" if opening else text

        for p in iter(updates.get, None):
            yield whole(p["text"]), f"{p['words']} of {n} words · {p['tokens_per_s']:.1f} tokens/s"
        thread.join()
        if "error" in result:
            raise ShelleyError(f"scene failed: {result['error']}")
        sc = result["scene"]
        notes.append(f"{sc.words} words in {sc.seconds:.0f} s ({sc.drawn_tokens / max(sc.seconds, 1e-9):.1f} tokens/s)")
        if "longest_span" in sc.guard:
            notes.append(f"longest copied span {sc.guard['longest_span']} words")
        if sc.guard.get("on"):
            notes.append(f"re-sampled {sc.guard['resampled']} copy(ies)")
        yield whole(sc.text), " · ".join(notes)

    def _stream(self, prompt: str, gen: GenerationConfig, notes: list[str]):
        """(the text pieces as they come, the result dict, the thread generating): the final text, or the
        model's error, is in the result once the thread is joined."""
        import queue

        from transformers import TextIteratorStreamer

        from shelley.generate import generate_texts

        result: dict[str, Any] = {}
        q: queue.Queue = queue.Queue()  # llama.cpp's pieces; None ends them
        streamer = None
        if self.engine is None:
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)

        def work() -> None:
            try:
                if streamer is None:
                    result["text"] = self.engine.generate([prompt], gen, on_note=notes.append, on_text=q.put)[0]
                else:
                    kw = {"streamer": streamer, "on_note": notes.append}
                    result["text"] = generate_texts(self.model, self.tokenizer, [prompt], gen, **kw)[0]
            except Exception as exc:  # surfaced below; the page shows a message, not a stack trace
                result["error"] = exc
                if streamer is not None:
                    streamer.end()
            finally:
                q.put(None)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        return (iter(q.get, None) if streamer is None else streamer), result, thread


def run_facts(results: EvalResult | None) -> str:
    """The headline numbers of the run behind the model, as markdown (empty without an evaluation)."""
    if results is None:
        return ""
    p = results.perplexity
    parts = [
        f"**{results.model}** ({results.method}) · validation perplexity "
        f"{p.base.perplexity:.1f} → **{p.finetuned.perplexity:.1f}**"
    ]
    if results.originality:
        parts.append(f"longest copied span in eval samples: {results.originality.finetuned.longest_span_max} words")
    if results.attribution:
        a = results.attribution
        ft = a.results["finetuned"]
        parts.append(f"{100 * ft['target_share']:.0f}% of {ft['bags']} generated bags attributed to {a.author}")
    return " · ".join(parts)


def run_results(run: Run | None) -> EvalResult | None:
    """The evaluation of the run behind a model, when it has one."""
    return run.eval_result() if run is not None and run.results_file() is not None else None


def handlers(demo: Demo, concurrency: int) -> int:
    """How many requests Gradio hands over at once: all the batcher can queue (it batches them itself), else
    ``concurrency``."""
    from shelley.generate.batch import BatchWriter

    return demo.engine.max_waiting if isinstance(demo.engine, BatchWriter) else concurrency


def _told(fn):
    """A demo handler whose errors (a full queue, a failed generation) reach the page as their message."""
    import gradio as gr

    @functools.wraps(fn)
    def handler(*args):
        try:
            yield from fn(*args)
        except ShelleyError as exc:
            raise gr.Error(str(exc)) from None

    return handler


def build_app(demo: Demo, *, title: str = "shelley", concurrency: int = 1):
    import gradio as gr

    concurrency = handlers(demo, concurrency)

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\nWrite the opening of a scene; the model carries it on.")
        if demo.facts:
            gr.Markdown(demo.facts, elem_id="facts")
        with gr.Tab("Continue"):
            _continue_tab(demo, concurrency)
        with gr.Tab("Scene", elem_id="scene-tab"):
            _scene_tab(demo, concurrency)
    app.queue(default_concurrency_limit=concurrency, max_size=max(64, concurrency))
    return app


def _keep_original(demo: Demo, elem_id: str, where: str = ""):
    """The guard's toggle, on and shown only when the demo has the corpus's originality index."""
    import gradio as gr

    return gr.Checkbox(
        value=demo.index is not None,
        visible=demo.index is not None,
        label=f"Keep it original (re-sample copies longer than {demo.max_span} words{where})",
        elem_id=elem_id,
    )


def _scene_tab(demo: Demo, concurrency: int) -> None:
    import gradio as gr

    gr.Markdown(f"A whole scene of up to {MAX_SCENE_WORDS:,} words, shown as it is written. Beats, one per line, "
                "are sentences the scene must pass through in order, each opening a paragraph.")  # fmt: skip
    prompt = gr.Textbox(label="Opening", lines=3, placeholder=demo.placeholder, elem_id="scene-prompt")
    beats = gr.Textbox(label="Beats (optional, one per line)", lines=3, elem_id="scene-beats")
    with gr.Row():
        words = gr.Slider(100, MAX_SCENE_WORDS, value=1000, step=50, label="Words", elem_id="scene-words")
        temperature = gr.Slider(0.0, 2.0, value=demo.gen.temperature, step=0.05, label="Temperature")
        top_p = gr.Slider(0.05, 1.0, value=demo.gen.top_p, step=0.05, label="Top-p")
        seed = gr.Number(value=demo.gen.seed, precision=0, label="Seed")
    original = _keep_original(demo, "scene-original", " where they start")
    button = gr.Button("Write the scene", variant="primary", elem_id="scene-write")
    output = gr.Textbox(label="Scene", lines=20, elem_id="scene-output", interactive=False)
    notes = gr.Markdown(elem_id="scene-notes")
    button.click(
        _told(demo.scene),
        inputs=[prompt, words, beats, temperature, top_p, seed, original],
        outputs=[output, notes],
        concurrency_limit=concurrency,
        api_name="scene",
    )


def _continue_tab(demo: Demo, concurrency: int) -> None:
    import gradio as gr

    prompt = gr.Textbox(label="Prompt", lines=3, placeholder=demo.placeholder, elem_id="prompt")
    with gr.Row():
        temperature = gr.Slider(0.0, 2.0, value=demo.gen.temperature, step=0.05, label="Temperature")
        top_p = gr.Slider(0.05, 1.0, value=demo.gen.top_p, step=0.05, label="Top-p")
        max_tokens = gr.Slider(
            1, MAX_TOKENS_LIMIT, value=min(demo.gen.max_new_tokens, MAX_TOKENS_LIMIT), step=1, label="Max tokens"
        )
        seed = gr.Number(value=demo.gen.seed, precision=0, label="Seed")
    original = _keep_original(demo, "original")
    button = gr.Button("Generate", variant="primary", elem_id="generate")
    output = gr.Textbox(label="Continuation", lines=10, elem_id="output", interactive=False)
    notes = gr.Markdown(elem_id="notes")
    button.click(
        _told(demo.generate),
        inputs=[prompt, temperature, top_p, max_tokens, seed, original],
        outputs=[output, notes],
        concurrency_limit=concurrency,
        api_name="generate",
    )


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            raise ShelleyError(f"port {port} on {host} is in use; pass --port with a free port") from None


def load_demo(
    ref: str, gen: GenerationConfig, *, max_span: int = 12, base: str | None = None, engine: str = "transformers",
    gguf: Path | None = None, batch: int = 64, int8: bool = False,
) -> Demo:  # fmt: skip
    """The demo of ``ref``; its requests are batched, up to ``batch`` rows at a time (transformers or llama.cpp;
    ``int8``: transformers with int8 weights)."""
    from shelley.eval.originality import run_index
    from shelley.generate.batch import batch_writer
    from shelley.generate.load import load_writer

    # llama.cpp: the batcher makes a context of its own, so the writer's needs no more than a token's worth of the
    # model's window (SmolLM2's full 8,192-token context held 177 MB of KV cache that nothing used)
    loaded, fast = load_writer(ref, engine, gguf, base=base, n_ctx=256, int8=int8)
    if fast is None:
        fast = batch_writer(loaded.model, loaded.tokenizer, max_batch=batch)
    else:  # llama.cpp: the same queue, each reader a sequence of one llama.cpp context
        from shelley.generate.llamacpp import LlamaCppBatchWriter

        fast = LlamaCppBatchWriter(fast, loaded.tokenizer, max_batch=batch)
    run = loaded.run
    index = run_index(run) if run is not None else None
    facts = run_facts(run_results(run))
    from shelley.generate.scene import paragraph_break_for

    demo = Demo(loaded.model, loaded.tokenizer, gen, index=index, max_span=max_span, facts=facts, engine=fast,
                paragraph_break=paragraph_break_for(run))  # fmt: skip
    prompts = run.prompts() if run is not None else []
    if prompts and prompts[0]:
        demo.placeholder = prompts[0]
    return demo


def serve(
    demo: Demo, *, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 1, title: str = "shelley",
    block: bool = True,
):  # fmt: skip
    """Start the server after checking the port; no telemetry, no share link. ``block=False`` returns the running
    app (close it with ``app.close()``)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    check_port_free(host, port)
    app = build_app(demo, title=title, concurrency=concurrency)
    # Gradio runs each streaming handler in a worker thread that blocks while its reader's tokens are written;
    # its default of 40 threads would hold the 41st reader out of the batch until another finished
    threads = max(40, handlers(demo, concurrency) + 8)
    app.launch(
        server_name=host, server_port=port, share=False, quiet=True, footer_links=[], max_threads=threads,
        prevent_thread_lock=True,
    )  # fmt: skip
    warm(app)
    if block:
        app.block_thread()
    return app


def warm(app) -> None:
    """One request of one token through the server's own HTTP route, queue and handler before the first reader
    comes: the imports and first allocations along that path are paid at start, not by the first readers (under
    50 readers at once they had cost 2-3 s of everyone's wait, measured)."""
    from gradio_client import Client

    try:
        client = Client(app.local_url, verbose=False, ssl_verify=False)  # plain http on this host: no TLS
        try:
            client.predict("", 1.0, 1.0, 1, 0, False, api_name="/generate")
        finally:
            client.close()
    except Exception as exc:  # the server still serves; the first reader pays the warm-up instead
        print(f"note: the warm-up request failed ({type(exc).__name__}: {exc})", file=sys.stderr)
