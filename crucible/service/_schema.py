"""Request bodies, decoded and type-checked by msgspec before anything is stored."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec

__all__ = ["BatchIn", "PointIn", "decode_error_location"]


class PointIn(msgspec.Struct, forbid_unknown_fields=True):
    """One metric point of `POST /api/v1/metrics/batch`."""

    metric: str
    value: float
    step: int | None = None
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


_LOCATION = re.compile(r"at `\$\.metrics\[(\d+)\](?:\.(\w+))?")


def decode_error_location(message: str) -> tuple[int | None, str | None]:
    """The (index, field) a msgspec validation message points at, when it names one."""
    match = _LOCATION.search(message)
    if match is None:
        return None, None
    return int(match.group(1)), match.group(2)
