"""What the commands share: their options (declared once), the error edge, the consoles and progress.

``key("train.method", "--method")`` is an option that sets a config key: its type and help come from the config
field (one source for ``--help``, ``shelley config keys`` and the docs). A command decorated with ``configured``
takes ``cfg`` instead of ``--config``/``--set`` and its key options: the decorator loads the config, applies the
options that were given (they win over the file and ``--set``), and passes the result.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from shelley.config import field_info, load_config, set_key
from shelley.errors import ShelleyError

console = Console()
err_console = Console(stderr=True)


@dataclass(frozen=True)
class Key:
    """Marks an option that sets the config key ``dotted``; ``flag`` names it in errors."""

    dotted: str
    flag: str


def key(dotted: str, flag: str, *aliases: str, type_: Any = None, **option: Any) -> Any:
    """An option for config key ``dotted``; None (not given) leaves the config's value."""
    field = field_info(dotted)
    typ = type_ if type_ is not None else field.annotation
    help_text = field.description or ""
    option_info = typer.Option(flag, *aliases, help=help_text, show_default=False, **option)
    return Annotated[typ | None, option_info, Key(dotted, flag.split("/")[-1])]


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config file or preset name (`shelley config presets`).", show_default=False
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: --set data.seed=7 (repeatable).", show_default=False),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the output if it exists.")]
WindowOpt = Annotated[
    int | None,
    typer.Option(
        "--window",
        help="Training and scoring window in tokens; the micro-batch is reshaped to see as many tokens a step.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
CorpusArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Corpus file (.csv with a `text` column, .txt / Gutenberg book, .jsonl), a folder of an author's books, "
        "a corpus.yaml, or several book files.",
        show_default=False,
    ),
]
ModelArg = Annotated[str, typer.Argument(help="Run dir, model or adapter dir, preset or Hub id.")]
RunArg = Annotated[Path, typer.Argument(help="Run dir of `shelley run` or `shelley train`.")]
BaseOpt = Annotated[str | None, typer.Option("--base", help="Base model of an adapter, if not its own.")]
ReferenceOpt = Annotated[
    Path | None, typer.Option("--reference", help="Reference set of other authors (default: eval.reference_dir).")
]
TokenizerOpt = Annotated[
    str | None, typer.Option("--tokenizer", help="Tokenizer preset, path or Hub id; `none` to skip token counts.")
]

# Option groups several commands share.
DATA_KEYS = {
    "fmt": key("data.format", "--format"),
    "text_column": key("data.text_column", "--text-column"),
    "encoding": key("data.encoding", "--encoding"),
}
SAMPLING_KEYS = {
    "temperature": key("generation.temperature", "--temperature", "-t"),
    "top_p": key("generation.top_p", "--top-p"),
    "max_new_tokens": key("generation.max_new_tokens", "--max-new-tokens", "-n"),
    "seed": key("generation.seed", "--seed"),
}


def configured(fn=None, *, default_config: str | None = None, groups: tuple[dict[str, Any], ...] = ()):
    """Give the command ``--config``, ``--set``, the key options of ``groups`` and its own key options; call it
    with ``cfg`` (and without those). ``default_config`` is the preset used when no --config is given."""
    if fn is None:
        return functools.partial(configured, default_config=default_config, groups=groups)
    hints = typing.get_type_hints(fn, include_extras=True)
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in inspect.signature(fn).parameters.values()]
    extra = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=t, default=None)
        for g in groups
        for n, t in g.items()
    ]
    config_params = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=ConfigOpt, default=None),
        inspect.Parameter("sets", inspect.Parameter.KEYWORD_ONLY, annotation=SetOpt, default=None),
    ]
    params = [p for p in own if p.name != "cfg"] + extra + config_params
    keys = {p.name: m for p in params for m in getattr(p.annotation, "__metadata__", ()) if isinstance(m, Key)}
    passed_on = {p.name for p in own}

    @functools.wraps(fn)
    def wrapper(*args: Any, config: Path | None = None, sets: list[str] | None = None, **kwargs: Any) -> Any:

        cfg = load_config(config or default_config, sets or [])
        for name, k in keys.items():
            if kwargs.get(name) is not None:
                try:
                    set_key(cfg, k.dotted, kwargs[name])
                except ShelleyError as exc:  # the library names the key; the flag is the CLI's to add
                    raise ShelleyError(f"{k.flag}: {exc}") from None
        return fn(*args, cfg=cfg, **{k: v for k, v in kwargs.items() if k in passed_on})

    wrapper.__signature__ = inspect.Signature(params)  # what typer reads: the options, not ``cfg``
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def opt(typ: Any, *decls: str, **option: Any) -> Any:
    """``Annotated[typ, typer.Option(*decls, **option)]``, in one line."""
    return Annotated[typ, typer.Option(*decls, **option)]


def arg(typ: Any, **argument: Any) -> Any:
    """``Annotated[typ, typer.Argument(**argument)]``, in one line."""
    return Annotated[typ, typer.Argument(**argument)]


F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn ShelleyError into one red line on stderr and its exit code (2), with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ShelleyError as exc:
            label = "[bold yellow]stopped:[/bold yellow]" if exc.exit_code == 130 else "[bold red]error:[/bold red]"
            from rich.markup import escape  # a message may hold [brackets], e.g. data.extra_sources=[chat]

            err_console.print(f"{label} {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; nothing was written")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def command(group: typer.Typer, name: str, *, config: bool = True, **configured_kw: Any):
    """Register a command: errors turned into messages, and (``config``) the config options of ``configured``."""

    def decorate(fn: F) -> F:
        return group.command(name)(user_errors(configured(fn, **configured_kw) if config else fn))

    return decorate


def note(msg: str) -> None:
    err_console.print(f"[yellow]note:[/yellow] {msg}", highlight=False)


def attribution_progress():
    """A progress bar for the evaluation's long text generation (the attribution's words, the scenes), and the
    callback that drives it: ``on_progress(who, done, total)``, ``who`` a model or "<model> scenes"."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("writing {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    )
    tasks: dict[str, Any] = {}

    def on_progress(who: str, done: int, total: int) -> None:
        if who not in tasks:
            what = who if who.endswith("scenes") else f"{who} text for attribution (words)"
            tasks[who] = progress.add_task(what, total=total)
        progress.update(tasks[who], completed=done)

    return progress, on_progress


APP_HELP = "shelley: fine-tune a language model to write in one author's voice."


def group(help_text: str) -> typer.Typer:
    """A command group (``shelley data ...``); bare, it prints its help."""
    return typer.Typer(help=help_text, no_args_is_help=True)


def tell(message: str) -> None:
    """A plain line on stderr (the library's notes while it works)."""
    err_console.print(message, highlight=False)


def _print_version(value: bool) -> None:
    if value:
        from shelley import __version__

        typer.echo(f"shelley {__version__}")
        raise typer.Exit()


VersionOpt = opt(bool, "--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
VerboseOpt = opt(bool, "--verbose", help="Show the libraries' own logs and progress bars (transformers, accelerate).")

EngineOpt = opt(str, "--engine", help="transformers, or llamacpp: the exported GGUF (`shelley export`), faster on CPU.")
Int8Opt = opt(
    bool,
    "--int8",
    help="With the transformers engine: int8 weights, faster for one stream on CPU (numbers change slightly; "
    "slower for many readers at once).",
)
GgufOpt = opt(Path | None, "--gguf", help="With --engine llamacpp: the GGUF file (default: RUN/export/*-f16.gguf).")
