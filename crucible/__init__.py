"""Crucible: a supervised actor runtime for fine-tuning experiments."""

__version__ = "0.1.0"
