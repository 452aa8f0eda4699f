"""Corpus pipeline: ingest, clean, split, inspect and token checks. Pure functions wherever possible."""
