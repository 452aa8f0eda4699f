"""Training: packed token blocks, model set-up per method (full / LoRA / QLoRA), one accelerate loop."""
