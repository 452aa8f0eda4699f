"""Configuration: one pydantic model per section, loaded from YAML with ``--set key.sub=value`` overrides.

Every field has a description and a default, so ``shelley`` runs with no config at all. Unknown keys and
wrong types are errors that name the key and the file they came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shelley.errors import ShelleyError


def resumable(default: Any, **kwargs: Any) -> Any:
    """A train field that ``--resume`` may change: how long the run goes on, how often it looks and what it keeps,
    never what the steps so far computed (``finetune.checkpoint.check_resume`` compares every other key)."""
    return Field(default, json_schema_extra={"resumable": True}, **kwargs)


def resumable_keys() -> set[str]:
    """The dotted keys (``train.steps``, ...) marked ``resumable``."""
    return {
        f"{section}.{name}"
        for section, field in ShelleyConfig.model_fields.items()
        for name, f in field.annotation.model_fields.items()
        if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("resumable")
    }


class _Section(BaseModel):
    # extra="forbid": a typo such as `lerning_rate` must fail loudly, not be ignored silently.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    source: str | None = Field(
        None, description="Corpus to read: a .csv (column `text`), .txt / Gutenberg book, or .jsonl file."
    )
    format: Literal["auto", "csv", "txt", "gutenberg", "jsonl"] = Field(
        "auto", description="Corpus format; `auto` picks it from the file extension and content."
    )
    text_column: str = Field("text", description="Column (CSV) or field (JSONL) that holds the text.")
    encoding: str = Field("utf-8", description="Text encoding of the corpus file.")
    max_words: int = Field(
        80,
        gt=0,
        description="Word budget per snippet when cutting a book; long paragraphs split at sentence ends.",
    )
    normalize_quotes: bool = Field(True, description="Turn curly quotes into straight ASCII quotes.")
    normalize_dashes: bool = Field(
        True, description="Turn en/em dashes and the typewriter `--` into one consistent em dash."
    )
    drop_noise: bool = Field(
        True, description="Drop noise rows: bare headings (`Chapter 4`, `Letter 2`) and bare numbers."
    )
    dedup_near: bool = Field(True, description="Drop near duplicates as well as exact duplicates.")
    near_dup_threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Jaccard similarity of word 3-gram shingles above which rows are near duplicates.",
    )
    min_words: int = Field(1, ge=1, description="Rows with fewer words than this after cleaning are dropped.")
    split: Literal["section", "block", "random"] = Field(
        "section",
        description="How to pick validation rows: whole chapters/letters (`section`), contiguous runs of"
        " `block_size` snippets (`block`), or random rows (`random`, leaks neighbouring text; for comparison).",
    )
    block_size: int = Field(40, gt=0, description="Snippets per contiguous block for `split: block`.")
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="Share of snippets held out for validation.")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="Share of snippets held out as a test split (0: none).")
    seed: int = Field(42, description="Seed for the split; the same seed gives the same dataset.")
    ngram: int = Field(8, gt=0, description="Word n-gram size used to measure train/validation overlap.")
    out: str = Field("data/dataset", description="Where `shelley data build` saves the DatasetDict.")
    extra_sources: list[str] = Field(
        default_factory=list,
        description="More training text mixed in (mostly for scratch models): chat (oasst1), math (gsm8k), code"
        " (CodeAlpaca), prose (wikitext) from the Hub while online, or arithmetic (synthetic, offline).",
    )
    source_max_rows: int = Field(2000, gt=0, description="Row cap per extra source.")
    author: str | None = Field(
        None,
        description="The corpus's author, as reports and attribution name it. null: from the Gutenberg header, an "
        "`author__title.txt` file name or a known book, else `the author of <file name>`; a run records it.",
    )
    title: str | None = Field(None, description="The corpus's title (null: found like data.author).")
    synthetic_fallback: bool = Field(
        False, description="When a Hub source cannot be fetched (offline), use synthetic arithmetic in its place."
    )


class ModelConfig(_Section):
    name: str = Field(
        "smollm2-135m",
        description="Base model: a preset (`shelley models list`), a local directory, or a Hub id.",
    )
    tokenizer: str | None = Field(None, description="Tokenizer name or path; defaults to the model's own.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for Hub models.")
    trust_remote_code: bool = Field(
        False, description="Run code shipped with a Hub model. Off unless you trust that repository."
    )
    max_length: int = Field(
        256, gt=0, description="Tokens per training block / maximum sequence length (the scratch GPT's seq_len)."
    )
    # The fields below shape the GPT that `train.method: scratch` builds; other methods ignore them.
    vocab_size: int = Field(
        4096, gt=0, description="Scratch: vocabulary of the byte-level BPE tokenizer trained on the corpus."
    )
    n_layers: int = Field(4, gt=0, description="Scratch: transformer blocks.")
    n_heads: int = Field(4, gt=0, description="Scratch: attention heads per block (must divide model.d_model).")
    d_model: int = Field(256, gt=0, description="Scratch: width of the residual stream (embedding size).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Scratch: dropout on attention, residuals and embeddings.")
    tie_weights: bool = Field(True, description="Scratch: output head shares the token embedding matrix.")


class TrainConfig(_Section):
    method: Literal["full", "lora", "qlora", "scratch"] = Field(
        "lora",
        description="full / lora / qlora fine-tune model.name; scratch trains a new GPT (model.n_layers, ...) and"
        " its own tokenizer (or model.tokenizer) from random weights.",
    )
    steps: int = resumable(200, gt=0, description="Optimizer steps to run.")
    micro_batch_size: int = Field(8, gt=0, description="Blocks per forward/backward pass.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate after warmup.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps before the cosine decay.")
    min_lr_ratio: float = Field(
        0.0,
        ge=0,
        le=1,
        description="The cosine decays to this fraction of train.learning_rate instead of to zero.",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Autocast precision of the training steps; `auto` uses bf16 where the device has bf16"
        " hardware (Ampere or later GPUs; CPUs with AVX512-BF16 or AMX), fp16 with loss scaling on older GPUs"
        " (a T4), else fp32. Validation runs without autocast.",
    )
    seed: int = Field(42, description="Seed for weights init, data order and dropout.")
    eval_every: int = resumable(50, gt=0, description="Evaluate validation loss every N steps.")
    sample_every: int = resumable(100, gt=0, description="Write sample generations every N steps.")
    checkpoint_every: int = resumable(100, gt=0, description="Checkpoint every N steps.")
    keep_checkpoints: int = resumable(2, gt=0, description="How many recent checkpoints to keep.")
    checkpoint_every_s: float | None = resumable(
        None,
        gt=0,
        description="Also checkpoint when this many seconds (train.budget_clock) passed since the last one (null: by "
        "steps only). None is taken within this long of the time budget's end: the outputs are saved then anyway.",
    )
    drop_checkpoints: bool = resumable(
        False,
        description="At a successful end, delete the checkpoints (the optimizer state: most of a run dir) and the "
        "best-weights copy; the model, tokenizer and metrics stay. `shelley run` sets it unless --keep-checkpoints.",
    )
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(32, gt=0, description="LoRA scaling alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    lora_target_modules: list[str] | None = Field(
        None, description="Module names to adapt; default: all attention and MLP projections of the model."
    )
    lora_layers: int | None = Field(
        None,
        gt=0,
        description="Adapt only the last N transformer blocks (null: all). The backward pass then stops at the "
        "lowest adapted block, so steps get cheaper: the CPU preset's trade of capacity for speed.",
    )
    fused_lora: bool = Field(
        True,
        description="Method lora: each LoRA layer runs as one autograd Function that adds the scaled low-rank "
        "update in place into the frozen layer's output (shelley.finetune.methods.fused_lora_linear_class) "
        "instead of PEFT's multiply-then-add. Same math, same saved adapter; false (or train.compile) runs PEFT's "
        "own forward. The fused layer computes the frozen layer's product itself, so forward hooks a user "
        "registers on that inner nn.Linear do not run; set false to keep them.",
    )
    fused_loss: bool | None = Field(
        None,
        description="Compute the output head and cross-entropy in vocabulary slices without keeping the logits "
        "(shelley.finetune.loss). null: on CPU only, for the model types in models.head.FUSABLE_MODEL_TYPES; other "
        "models always use their own loss.",
    )
    attention: Literal["auto", "sdpa", "eager"] = Field(
        "auto",
        description="Attention kernel of the training forward (Hugging Face models; the scratch GPT has its own). "
        "auto: eager (matmul and softmax) where training autocasts to bf16 on a CPU, where torch's SDPA "
        "flash kernel is over twice as slow at these lengths (docs/results.md), else the model's own choice. The "
        "model gets its own kernel back when training ends; saved models keep it.",
    )
    keep_best: bool = resumable(
        True,
        description="Save the weights (or adapter) of the best validation loss seen as the run's output, not the "
        "last ones; the kept step is in train_summary.json, the reports and the loss plot.",
    )
    patience: int | None = resumable(
        None,
        gt=0,
        description="Stop after this many evaluations in a row without a validation loss at least "
        "train.min_delta below the best (null: never stop early).",
    )
    min_delta: float = resumable(
        0.0, ge=0, description="Validation-loss improvement (nats/token) that counts as better."
    )
    max_epochs: float | None = resumable(
        None,
        gt=0,
        description="At most this many passes over the training tokens (null: no limit); the steps, the time "
        "budget and this limit end training at whichever comes first, and the cosine schedule fits to it.",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (recompute activations).")
    nan_policy: Literal["stop", "skip"] = Field(
        "stop",
        description="On a NaN/inf loss: stop (keeping the last good checkpoint) or skip that optimizer step.",
    )
    max_skipped_steps: int = Field(
        10, ge=0, description="With nan_policy skip: stop anyway after this many skipped steps in one run."
    )
    compile: bool = Field(
        False,
        description="torch.compile the model before training (faster steps on GPU after a slow first one). On "
        "CPU it does not pay: the first step's compile costs more than the steps save (docs/results.md).",
    )
    merge: bool = resumable(False, description="Also save the adapter merged into the base model.")
    run_dir: str = Field("runs/latest", description="Where the run writes checkpoints, metrics and outputs.")
    time_budget_s: float | None = resumable(
        None, gt=0, description="Stop training after this many seconds (None: run all steps); see budget_clock."
    )
    budget_clock: Literal["wall", "train"] = resumable(
        "wall",
        description="What time_budget_s counts. wall: everything since training started, evaluations, samples "
        "and checkpoints included (what you wait for). train: optimizer-step time only, so the evaluations "
        "of a learning curve do not shorten the training it measures (the benchmark uses this).",
    )


class EvalConfig(_Section):
    prompts: list[str] | None = Field(
        None,
        description="Prompts for side-by-side generations. null: a known book's own prompts, else the first 8 words"
        " of 5 validation paragraphs; a run records the prompts it used.",
    )
    samples_per_prompt: int = Field(4, gt=0, description="Samples per prompt in the side-by-side report.")
    full_length: bool = Field(
        True,
        description="Generate exactly generation.max_new_tokens per sample in eval, so base and fine-tuned texts "
        "are compared at equal length (Delta and the other style measures depend on length).",
    )
    max_copied_span: int = Field(
        12, gt=0, description="Originality threshold: longest span (words) a sample may copy from the corpus."
    )
    style_features: int = Field(50, gt=1, description="Most frequent function words used by Burrows' Delta.")
    reference_dir: str | None = Field(
        None,
        description="Reference set of other authors' books for attribution (MANIFEST.json + texts). null:"
        " $SHELLEY_DATA_DIR/reference, else reference/ beside the corpus (or in its parent), else"
        " $SHELLEY_HOME/reference (`shelley data fetch reference`).",
    )
    attribution_bags: int = Field(
        20, gt=0, description="Bags of generated text per model for `shelley eval --attribution` (--bags)."
    )
    run_attribution_bags: int = Field(
        4, ge=0, description="Bags per model for the reduced attribution inside `shelley run` (0: skip it)."
    )
    bag_words: int = Field(1000, gt=0, description="Words per bag for attribution (~1,000 is the tested minimum).")
    keep_names: bool = Field(
        False,
        description="Keep names (words capitalised in >= 90% of their mid-sentence uses) among the attribution's"
        " features; by default they are left out, so a model earns the author's votes by style, not by names.",
    )
    run_scenes: int = Field(
        0,
        ge=0,
        description="Whole scenes per model inside `shelley run` (0: none; on 2 CPU cores a 1,000-word scene takes"
        " about a minute per model, see docs/results.md). `shelley eval RUN --scenes N` runs the full test.",
    )
    scene_words: int = Field(1000, ge=100, le=3000, description="Words per scene in the scene test.")
    stride: int = Field(128, gt=0, description="Sliding-window stride (tokens) for perplexity of long texts.")
    max_eval_tokens: int | None = Field(
        None, gt=0, description="Cap on validation tokens used for perplexity (None: all of them)."
    )


class GenerationConfig(_Section):
    max_new_tokens: int = Field(120, gt=0, description="Tokens to generate per sample.")
    min_new_tokens: int = Field(0, ge=0, description="Do not stop (EOS suppressed) before this many tokens.")
    do_sample: bool = Field(True, description="Sample (True) or decode greedily (False).")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature (0: greedy).")
    top_k: int = Field(50, ge=0, description="Keep only the k most likely tokens (0: off).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    repetition_penalty: float = Field(1.1, gt=0, description="Penalty on tokens already generated (1: off).")
    no_repeat_ngram_size: int = Field(0, ge=0, description="Forbid repeating n-grams of this size (0: off).")
    num_samples: int = Field(1, gt=0, description="Samples per prompt.")
    seed: int = Field(1234, description="Sampling seed.")
    stop: list[str] = Field(default_factory=list, description="Stop a sample at the first of these strings.")


class ShelleyConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig, description="Corpus ingest, cleaning and split.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model and tokenizer.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training loop.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Text generation.")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ShelleyError(f"config file not found: {path}; check the --config path")
    if path.is_dir():
        raise ShelleyError(f"config {path} is a directory; pass a YAML file to --config")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ShelleyError(f"config {path} is not UTF-8 text; save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ShelleyError(f"YAML syntax error in {path} at {where}: {exc.problem}; fix the file") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ShelleyError(f"cannot parse {path} as YAML ({type(exc).__name__}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ShelleyError(f"config {path} must be a mapping of sections (data:, model:, train:, ...)")
    return data


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ShelleyError(f"bad --set {item!r}; write it as --set section.key=value, e.g. --set train.steps=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: keep the string as written
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``key.sub=value`` overrides applied (values parsed as YAML scalars)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        keys, value = _parse_override(item)
        node = out
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ShelleyError(f"bad --set {item!r}: {k} is not a section")
            node = child
        node[keys[-1]] = value
    return out


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown config key {key!r} in {origin}; check the spelling (`shelley config show` lists every key)"
    return f"invalid value for {key!r} in {origin}: {err['msg']} (got {err.get('input')!r})"


DEFAULT_RUN_PRESET = "smollm2-135m_full_cpu"  # what `shelley run` trains with when no --config is given


def presets() -> dict[str, Any]:
    """The presets shipped inside the package (``shelley/configs/*.yaml``), by name; they travel with the wheel."""
    from importlib.resources import files

    folder = files("shelley").joinpath("configs")
    return {p.name.removesuffix(".yaml"): p for p in folder.iterdir() if p.name.endswith(".yaml")}


def resolve_config(ref: str | Path) -> Path:
    """A config file: ``ref`` itself when it exists, else the packaged preset named by its stem, so
    ``smollm2-135m_lora_cpu``, ``smollm2-135m_lora_cpu.yaml`` and the old ``configs/smollm2-135m_lora_cpu.yaml``
    all work from any directory and from an installed wheel."""
    path = Path(ref)
    if path.exists():
        return path
    shipped = presets().get(path.name.removesuffix(".yaml"))
    if shipped is not None:
        return Path(str(shipped))
    raise ShelleyError(
        f"config file not found: {ref}; pass a YAML file or a preset name ({', '.join(sorted(presets()))})"
    )


def with_window(cfg: ShelleyConfig, window: int) -> ShelleyConfig:
    """``cfg`` with training and scoring windows of ``window`` tokens (``model.max_length``, ``eval.stride``) and
    the micro-batch reshaped so that a step sees as many tokens as before (at least one window): the measured
    way to compare windows, since a longer window alone would also make every step bigger."""
    if window < 16:
        raise ShelleyError(f"--window must be at least 16 tokens (got {window}); e.g. --window 512")
    micro = max(1, cfg.train.micro_batch_size * cfg.model.max_length // window)
    return cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"max_length": window}),
            "train": cfg.train.model_copy(update={"micro_batch_size": micro}),
            "eval": cfg.eval.model_copy(update={"stride": window}),
        }
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ShelleyConfig:
    """Load a config: defaults, then the YAML file or preset (if any), then ``--set`` overrides."""
    overrides = overrides or []
    data = _read_yaml(resolve_config(path)) if path else {}
    origin = str(path) if path else "the defaults"
    if overrides:
        data = apply_overrides(data, overrides)
        origin = f"{origin} with --set {' '.join(overrides)}"
    try:
        return ShelleyConfig.model_validate(data)
    except ValidationError as exc:
        raise ShelleyError(_format_validation_error(exc, origin)) from None


def describe_fields(model: type[BaseModel] = ShelleyConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every field, for `shelley config show` and docs."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, prefix=f"{key}."))
        else:
            default = field.get_default(call_default_factory=True)
            rows.append((key, repr(default), field.description or ""))
    return rows


def field_info(dotted: str):
    """The pydantic field behind a dotted key (``train.method``): its type, default and description."""
    section, name = dotted.split(".")
    return ShelleyConfig.model_fields[section].annotation.model_fields[name]


def set_key(cfg: ShelleyConfig, dotted: str, value: Any) -> None:
    """Set one key, validated like the YAML; an invalid value is an error that names the key."""
    section, name = dotted.split(".")
    try:
        setattr(getattr(cfg, section), name, str(value) if isinstance(value, Path) else value)
    except ValidationError as exc:
        raise ShelleyError(f"invalid {dotted} {value!r}: {exc.errors()[0]['msg']}") from None


def preset_summaries() -> dict[str, str]:
    """Each shipped preset with the one line its header comment gives it."""
    out = {}
    for name, path in sorted(presets().items()):
        lines = [x.lstrip("# ").strip() for x in path.read_text("utf-8").splitlines()[:4] if x.startswith("#")]
        out[name] = next((x for x in lines[1:] if x), "")
    return out
