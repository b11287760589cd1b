"""Crucible: a supervised actor runtime for fine-tuning experiments."""

from crucible.actors import embedded, open_runtime

__version__ = "0.1.0"

__all__ = ["__version__", "embedded", "open_runtime"]
