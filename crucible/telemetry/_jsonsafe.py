"""Make arbitrary event data JSON-safe by dropping what JSON cannot hold."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["jsonable", "struct_jsonable"]

_DROP = object()


def _convert(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str | int | float | bool):
                continue
            converted = _convert(item)
            if converted is not _DROP:
                out[str(key)] = converted
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = (_convert(item) for item in value)
        return [item for item in items if item is not _DROP]
    try:
        # Structs, dataclasses, datetimes, UUIDs, enums... whatever msgspec knows.
        builtin = msgspec.to_builtins(value)
    except (TypeError, ValueError):
        return _DROP
    return _convert(builtin) if builtin is not value else _DROP


def jsonable(value: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``value`` holding only JSON types: values JSON cannot encode are dropped
    (a NaN or infinity becomes null), never raised on."""
    converted = _convert(value)
    return converted if isinstance(converted, dict) else {}


def struct_jsonable(struct: msgspec.Struct) -> dict[str, Any]:
    """``jsonable`` of a Struct's fields (its metadata dicts may hold anything)."""
    return jsonable({name: getattr(struct, name) for name in struct.__struct_fields__})
