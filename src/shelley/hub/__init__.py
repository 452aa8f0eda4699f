"""Delivery to the Hugging Face Hub: model, Space and dataset cards filled from a run, and the push."""
