"""Evaluation: perplexity on fixed validation tokens, side-by-side generations, reports."""
