"""Export of recorded events to CSV and JSONL (and reading JSONL back)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from crucible.telemetry._errors import UnsupportedFormat
from crucible.telemetry._event import TelemetryEvent
from crucible.telemetry._jsonsafe import jsonable, struct_jsonable

__all__ = ["FORMATS", "ExportFormat", "flatten_event", "read_jsonl", "to_csv", "to_jsonl"]

ExportFormat = Literal["csv", "jsonl"]
FORMATS: tuple[str, ...] = ("csv", "jsonl")

_encoder = msgspec.json.Encoder()


def _flatten(prefix: str, value: Mapping[str, Any], out: dict[str, Any]) -> None:
    for key, item in value.items():
        column = f"{prefix}_{key}"
        if isinstance(item, Mapping):
            _flatten(column, item, out)
        else:
            out[column] = item


def flatten_event(event: TelemetryEvent) -> dict[str, Any]:
    """One CSV row: the event's fields, with metadata flattened to ``metadata_a_b`` and
    measurements to ``measurement_x`` (nested mappings join their keys with ``_``)."""
    row = {
        field: getattr(event, field)
        for field in TelemetryEvent.__struct_fields__
        if field not in ("metadata", "measurements")
    }
    _flatten("metadata", event.metadata, row)
    _flatten("measurement", event.measurements, row)
    return row


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    # Lists, tuples and other values: their JSON form, so a reader can parse them back.
    converted = jsonable({"v": value}).get("v")
    return "" if converted is None else _encoder.encode(converted).decode()


def to_csv(events: Sequence[TelemetryEvent]) -> str:
    """CSV text: a header of every column (sorted), then one row per event; None is empty."""
    rows = [flatten_event(event) for event in events]
    columns = sorted({column for row in rows for column in row})
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # RFC 4180: CRLF rows, so a \r in a value gets quoted too
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def to_jsonl(events: Iterable[TelemetryEvent]) -> str:
    """One JSON object per event and line; values JSON cannot hold are dropped."""
    lines = [_encoder.encode(struct_jsonable(event)).decode() for event in events]
    return "".join(line + "\n" for line in lines)


def read_jsonl(path: str | Path) -> list[TelemetryEvent]:
    """Events exported by ``to_jsonl`` (an archive's experiment line is skipped)."""
    events = []
    for line in Path(path).read_bytes().splitlines():
        if not line.strip():
            continue
        obj = msgspec.json.decode(line)
        if isinstance(obj, dict) and obj.get("type") == "experiment":
            continue
        events.append(msgspec.convert(obj, TelemetryEvent))
    return events


def render(events: Sequence[TelemetryEvent], fmt: str) -> str:
    if fmt == "csv":
        return to_csv(events)
    if fmt == "jsonl":
        return to_jsonl(events)
    raise UnsupportedFormat(fmt, FORMATS)
