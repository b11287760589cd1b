"""The metric record, its validation, and the summary a store computes from records."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from ._errors import InvalidRecord

__all__ = ["MetricRecord", "MetricSummary", "coerce_batch", "utc_now"]

# Every store keeps steps in a signed 64-bit column (SQLite INTEGER, PostgreSQL bigint).
_MAX_STEP = 2**63 - 1
_set = msgspec.structs.force_setattr
_metadata_encoder = msgspec.json.Encoder()


def utc_now() -> datetime:
    """The current time as an aware UTC datetime (the default record timestamp)."""
    return datetime.now(UTC)


class MetricRecord(msgspec.Struct, frozen=True, gc=False):
    """One measurement of one metric in one run.

    On disk and on the wire a record is one JSON object with exactly the keys run_id, metric,
    value, step, timestamp (ISO 8601, UTC, written with the `Z` offset) and metadata.

    A record is validated when it is built, by hand or decoded from JSON, so an invalid record
    cannot exist: `InvalidRecord` names the field. `value` is stored as a float, `timestamp`
    is normalised to UTC, and `metadata` is copied so later changes by the caller do not
    reach a stored record.

    `gc=False`: records hold no reference cycles (metadata is JSON), so the garbage collector
    need not track millions of them; that roughly halves the cost of reading a large file.
    """

    run_id: str
    metric: str
    value: float
    step: int | None = None
    timestamp: datetime = msgspec.field(default_factory=utc_now)
    metadata: dict[str, Any] = {}

    def __post_init__(self) -> None:
        # One fast test per field for the common, valid case (this runs for every record
        # read back from disk too); the slow path explains what is wrong.
        run_id, metric, value, step = self.run_id, self.metric, self.value, self.step
        if type(run_id) is not str or not run_id or "\x00" in run_id:
            _check_name("run_id", run_id)
        if type(metric) is not str or not metric or "\x00" in metric:
            _check_name("metric", metric)
        # value - value is 0.0 for every finite float, NaN for NaN and the infinities.
        if type(value) is not float or value - value != 0.0:
            _check_value(self)
        if step is not None and (type(step) is not int or not 0 <= step <= _MAX_STEP):
            _check_step(step)
        timestamp = self.timestamp
        if type(timestamp) is not datetime or timestamp.tzinfo is not UTC:
            _check_timestamp(self)
        if self.metadata or type(self.metadata) is not dict:
            _check_metadata(self)


class MetricSummary(msgspec.Struct, frozen=True):
    """Statistics of one metric in one run, over every stored record.

    `std` is the sample standard deviation (ddof=1), 0.0 for a single record. `last` is the
    value of the last record in step-then-time order; `first_step`/`last_step` are the smallest
    and largest steps, None when no record has a step.
    """

    run_id: str
    metric: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    last: float
    first_step: int | None
    last_step: int | None


def coerce_batch(records: Iterable[MetricRecord | Mapping[str, Any]]) -> list[MetricRecord]:
    """Validate a whole batch before any of it is stored: one bad record rejects all of it.

    Items may be `MetricRecord`s (already valid) or mappings with the record's keys.
    """
    batch: list[MetricRecord] = []
    for index, item in enumerate(records):
        if type(item) is MetricRecord:
            batch.append(item)
            continue
        if not isinstance(item, Mapping):
            problem = f"expected a MetricRecord or a mapping, got {_kind(item)}"
            raise InvalidRecord("record", problem, index=index)
        try:
            batch.append(MetricRecord(**item))
        except InvalidRecord as error:
            raise error.at_index(index) from None
        except TypeError as error:  # missing or unknown keys
            raise InvalidRecord("record", str(error), index=index) from None
    return batch


def _kind(value: object) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _check_value(record: MetricRecord) -> None:
    value: object = record.value
    if type(value) is not float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRecord("value", f"must be a real number, got {_kind(value)}")
        try:
            _set(record, "value", float(value))
        except OverflowError:
            raise InvalidRecord("value", "integer too large for a float") from None
    if not math.isfinite(record.value):
        raise InvalidRecord("value", f"must be finite, got {record.value!r}")


def _check_step(step: object) -> None:
    if type(step) is not int:
        raise InvalidRecord("step", f"must be an int or None, got {_kind(step)}")
    raise InvalidRecord("step", f"must be between 0 and 2**63-1, got {step}")


def _check_name(field: str, value: object) -> None:
    if type(value) is not str:
        raise InvalidRecord(field, f"must be a string, got {_kind(value)}")
    if not value:
        raise InvalidRecord(field, "must not be empty")
    if "\x00" in value:
        raise InvalidRecord(field, "must not contain NUL characters")


def _check_timestamp(record: MetricRecord) -> None:
    ts: object = record.timestamp
    if not isinstance(ts, datetime):
        raise InvalidRecord("timestamp", f"must be a datetime, got {_kind(ts)}")
    offset = ts.utcoffset()
    if offset is None:
        raise InvalidRecord(
            "timestamp", f"must be timezone-aware (e.g. datetime.now(timezone.utc)), got {ts!r}"
        )
    if offset != timedelta(0) or ts.tzinfo is not UTC:
        try:
            _set(record, "timestamp", ts.astimezone(UTC))
        except OverflowError:
            problem = f"out of range once converted to UTC: {ts!r}"
            raise InvalidRecord("timestamp", problem) from None


def _check_metadata(record: MetricRecord) -> None:
    metadata: object = record.metadata
    if not isinstance(metadata, dict):
        raise InvalidRecord("metadata", f"must be a dict, got {_kind(metadata)}")
    if not all(type(key) is str for key in metadata):
        raise InvalidRecord("metadata", "keys must be strings")
    try:
        encoded = _metadata_encoder.encode(metadata)
    except (TypeError, ValueError, OverflowError) as error:
        raise InvalidRecord("metadata", f"must be JSON-serialisable: {error}") from None
    if b"\\u0000" in encoded:
        raise InvalidRecord("metadata", "must not contain NUL characters")
    _set(record, "metadata", dict(metadata))
