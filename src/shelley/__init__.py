"""shelley: fine-tune a language model to write in one author's voice."""

__version__ = "0.1.0"
