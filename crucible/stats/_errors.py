"""Typed errors raised by crucible.stats."""

from __future__ import annotations


class StatsError(Exception):
    """Base class of every error raised by crucible.stats."""


class InvalidValueError(StatsError, ValueError):
    """A value cannot be used as a number here (not numeric, or outside a sketch's range)."""


class InvalidStateError(StatsError, ValueError):
    """A serialised state (a checkpoint) is inconsistent, so it was refused.

    Restoring it would silently corrupt every statistic merged with it afterwards.
    """
