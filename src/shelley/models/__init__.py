"""Base models: the preset registry, offline GGUF import, and loading of models and tokenizers."""
