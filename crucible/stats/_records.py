"""Reading fields from records of any shape: a Mapping, or an object with attributes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._errors import InvalidValueError


def field_of(record: object, name: str) -> Any:
    """`record[name]` for a Mapping, `record.name` otherwise; None when absent.

    Window and analysis functions accept telemetry events as msgspec structs, attrs objects or
    plain dicts alike, so they read fields through this one function.
    """
    if isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)


def timestamp_of(record: object) -> int | float:
    """The record's `timestamp` (µs since the epoch); InvalidValueError if it has none."""
    value = field_of(record, "timestamp")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValueError(
            f"every record needs a numeric 'timestamp' (µs since the epoch); got {value!r} "
            f"in {type(record).__name__}"
        )
    return value
