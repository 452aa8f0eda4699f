"""A GPT trained from scratch: its own tokenizer, a plain-PyTorch model, exported to GPT-2 format."""
