from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shelley.cli import app

REPO = Path(__file__).resolve().parents[1]

# A small book in Gutenberg form, written by the tests (never text of the novel itself).
BOOK_BODY = """\
Letter 1


St. Petersburgh, Dec. 11th, 17--

TO Mrs. Saville, England

The ship lay at anchor while the wind rose over the grey water and the men sang below.
I wrote to you by lamplight; the ink froze twice before I could finish a line.

Chapter 1

I was born in a quiet town by the lake, where my father kept a study full of old books.
My mother taught me letters — and patience — and both served me ill in later years.

Chapter 1

0

The storm broke at midnight. Lightning split the old oak at the end of the garden, and I ran out to see.
“What power is this?” I asked my father; he answered only that it was electricity.
"""

GUTENBERG = (
    "The Project Gutenberg eBook of Test Book\n\nThis ebook is for the use of anyone anywhere.\n\n"
    "*** START OF THE PROJECT GUTENBERG EBOOK TEST BOOK ***\n\n"
    + BOOK_BODY
    + "\n*** END OF THE PROJECT GUTENBERG EBOOK TEST BOOK ***\n\n"
    "START: FULL LICENSE\n\nTHE FULL PROJECT GUTENBERG LICENSE\nSection 1. General Terms of Use\n"
)


@pytest.fixture(scope="session")
def shelley_home() -> Path:
    """The model cache shared by the whole session (CI sets SHELLEY_HOME; locally a repo-level cache)."""
    home = Path(os.environ.get("SHELLEY_HOME") or REPO / ".cache" / "shelley")
    os.environ["SHELLEY_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def novel_dir() -> Path:
    """Where the shared novel lives: $SHELLEY_DATA_DIR, else ../shared/data beside the checkout."""
    path = Path(os.environ.get("SHELLEY_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (path / "frankenstein.txt").exists():
        if os.environ.get("CI"):
            pytest.fail(f"the novel is missing at {path}; CI must set SHELLEY_DATA_DIR")
        pytest.skip(f"novel not found at {path}; set SHELLEY_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def smol_tokenizer(shelley_home):
    from shelley.models.registry import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    return save_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


def save_tiny_tokenizer(out: Path) -> Path:
    """A byte-level BPE tokenizer trained in a second on the fixture text, saved like any HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([BOOK_BODY] * 3, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(out)
    return out


@pytest.fixture
def cli(shelley_home):
    """Run the real CLI in-process; returns the click Result (stdout, stderr, exit_code)."""
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture
def unwritable_dir(tmp_path) -> Path:
    """A directory that really refuses new files: chmod 555 for normal users; /sys when running as root."""
    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(0o555)
    for candidate in (d, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(probe)
    pytest.fail("found no unwritable directory to test with")


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def save_bos_tokenizer(out: Path) -> Path:
    """The tiny tokenizer with a BOS token (id 1) that its post-processor puts in front of every encoding, as
    Gemma's, Llama's and Mistral's do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<bos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([BOOK_BODY] * 3, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<bos>").save_pretrained(out)
    return out


def tiny_causal_lm(kind: str, vocab: int, *, seed: int = 0, max_positions: int = 64, hidden: int = 32):
    """A 2-layer random GPT-2, Llama, Mistral or Gemma 3 built from its config, ``hidden`` wide; token 0 is the
    tiny tokenizer's EOS (and token 1 the BOS of ``save_bos_tokenizer``)."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, GPT2Config, LlamaConfig, MistralConfig

    torch.manual_seed(seed)
    ids = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, "vocab_size": vocab}
    if kind == "gemma3":
        # Gemma 3's shape in small: one key/value head, sliding-window and global layers, GELU, tied head.
        config = Gemma3TextConfig(
            hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=max_positions, sliding_window=16,
            layer_types=["sliding_attention", "full_attention"], **(ids | {"bos_token_id": 1}),
        )  # fmt: skip
        return AutoModelForCausalLM.from_config(config)
    if kind == "gpt2":
        config = GPT2Config(n_layer=2, n_head=2, n_embd=hidden, n_positions=max_positions, **ids)
    else:
        shape = {
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "max_position_embeddings": max_positions,
            **ids,
        }
        config = LlamaConfig(**shape) if kind == "llama" else MistralConfig(sliding_window=None, **shape)
    return AutoModelForCausalLM.from_config(config)


def save_tiny_model(kind: str, tokenizer_dir: Path, out: Path, *, hidden: int = 32) -> Path:
    """A tiny random model of ``kind`` saved with save_pretrained next to its tokenizer: a 'local path' model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tiny_causal_lm(kind, len(tok), max_positions=128, hidden=hidden).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    return save_tiny_model("llama", tiny_tokenizer_dir, tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir, shelley_home):
    """A finished `shelley train` run dir of the tiny Llama on the fixture book (full fine-tune, a few steps)."""
    from shelley.config import load_config
    from shelley.finetune.loop import train

    cfg = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            "model.max_length=32",
            "train.method=full",
            "train.steps=4",
            "train.micro_batch_size=4",
            "train.learning_rate=3e-3",
            "train.warmup_steps=1",
            "eval.stride=16",
        ],
    )
    lines = [line for line in BOOK_BODY.splitlines() if len(line) > 40]
    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(cfg, lines * 4, lines[:3], run, show_progress=False)
    return run


SCRATCH_SETS = [
    "model.vocab_size=320",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.d_model=32",
    "model.max_length=64",
    "train.steps=30",
    "train.micro_batch_size=8",
    "train.learning_rate=3e-3",
    "train.warmup_steps=2",
    "train.eval_every=10",
    "train.sample_every=15",
    "train.checkpoint_every=15",
    "data.extra_sources=[arithmetic]",
    "data.split=random",
    "data.source_max_rows=200",
    "generation.max_new_tokens=16",
    "eval.samples_per_prompt=1",
    "eval.stride=32",
]


def set_flags(*sets: str) -> list[str]:
    """CLI overrides: set_flags("a=1", "b=2") -> ["--set", "a=1", "--set", "b=2"]."""
    return [x for s in sets for x in ("--set", s)]


def train_losses(run: Path) -> list[float]:
    """The per-step training losses a run logged in its metrics.jsonl."""
    import json

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def scratch_args(*sets: str, drop: tuple[str, ...] = ()) -> list[str]:
    """``--set`` flags of the tiny scratch config, plus ``sets``, minus the keys named in ``drop``."""
    return set_flags(*(s for s in [*SCRATCH_SETS, *sets] if s.split("=")[0] not in drop))


@pytest.fixture(scope="session")
def scratch_run(tmp_path_factory, shelley_home) -> Path:
    """A GPT trained from scratch through the real CLI on the fixture book plus synthetic arithmetic chat."""
    d = tmp_path_factory.mktemp("scratch")
    book = write(d / "book.txt", BOOK_BODY)
    run = d / "run"
    res = CliRunner().invoke(
        app, ["train", str(book), "--method", "scratch", "--run-dir", str(run), *scratch_args()], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    return run
