"""Request bodies, decoded and type-checked by msgspec before anything is stored."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec

from crucible.metrics import InvalidRecord, RunRecord

__all__ = [
    "MAX_METADATA_DEPTH",
    "BatchIn",
    "HeartbeatIn",
    "LatestValue",
    "PointIn",
    "RunOut",
    "decode_error_location",
    "metadata_depth",
    "whole_step",
]

# Metadata describes a point (a tag, a config excerpt); deeper nesting is refused with 422,
# well before anything downstream (JSON encoders, the database) would hit a recursion limit.
MAX_METADATA_DEPTH = 32


class PointIn(msgspec.Struct, forbid_unknown_fields=True):
    """One metric point of `POST /api/v1/metrics/batch`."""

    metric: str
    value: float
    # JSON has one number type: 7.0 is the integer 7 to JSON Schema (and to the OpenAPI
    # document), so a whole float is taken as a step; 7.5 is refused (`whole_step`).
    step: int | float | None = None
    timestamp: datetime | None = None
    metadata: dict[str, Any] | None = None


class SystemPointIn(msgspec.Struct, forbid_unknown_fields=True):
    """One system sample of `POST /api/v1/runs/{id}/system/batch` (stored as system/<metric>)."""

    metric: str
    value: float
    timestamp: datetime | None = None


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    run_id: str
    metrics: list[PointIn]


class SystemBatchIn(msgspec.Struct, forbid_unknown_fields=True):
    metrics: list[SystemPointIn]


class HeartbeatIn(msgspec.Struct, forbid_unknown_fields=True):
    """The optional body of `POST /api/v1/runs/{id}/heartbeat` (no body: the server's now)."""

    at: datetime | None = None


class LatestValue(msgspec.Struct):
    value: float
    step: int | None
    timestamp: datetime


class RunOut(RunRecord, frozen=True, kw_only=True):
    """A run as the API answers it: the record, and what the runs table shows of it."""

    run_id: str
    metric_count: int
    last_step: int | None
    last_timestamp: datetime
    latest: dict[str, LatestValue]


_LOCATION = re.compile(r"at `\$\.metrics\[(\d+)\](?:\.(\w+))?")


def decode_error_location(message: str) -> tuple[int | None, str | None]:
    """The (index, field) a msgspec validation message points at, when it names one."""
    match = _LOCATION.search(message)
    if match is None:
        return None, None
    return int(match.group(1)), match.group(2)


def metadata_depth(value: Any, limit: int = MAX_METADATA_DEPTH) -> int:
    """How deeply `value` nests lists and dicts (0 for a scalar), counted without recursion;
    the count stops just past `limit`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth) for child in children)
    return deepest


def whole_step(step: int | float | None) -> int | None:
    """`step` as an int; `InvalidRecord` for a float with a fractional part."""
    if type(step) is float:
        if not step.is_integer():
            raise InvalidRecord("step", f"must be a whole number, got {step!r}")
        return int(step)
    return step  # type: ignore[return-value]
