"""MetricRecord: validation names the field, the JSON shape is fixed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from crucible.metrics import InvalidRecord, MetricRecord
from crucible.metrics._record import coerce_batch

T0 = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"run_id": ""}, "run_id", "empty"),
        ({"run_id": 7}, "run_id", "string"),
        ({"run_id": "a\x00b"}, "run_id", "NUL"),
        ({"metric": ""}, "metric", "empty"),
        ({"metric": None}, "metric", "string"),
        ({"value": "0.5"}, "value", "real number"),
        ({"value": True}, "value", "real number"),
        ({"value": None}, "value", "real number"),
        ({"value": float("nan")}, "value", "finite"),
        ({"value": float("inf")}, "value", "finite"),
        ({"value": -float("inf")}, "value", "finite"),
        ({"value": 10**400}, "value", "too large"),
        ({"step": -1}, "step", "between"),
        ({"step": 2**63}, "step", "between"),
        ({"step": 1.0}, "step", "int"),
        ({"step": True}, "step", "int"),
        ({"timestamp": "2025-01-01T00:00:00Z"}, "timestamp", "datetime"),
        ({"timestamp": datetime(2025, 1, 1)}, "timestamp", "timezone-aware"),
        ({"timestamp": 1700000000.0}, "timestamp", "datetime"),
        ({"metadata": []}, "metadata", "dict"),
        ({"metadata": {1: "x"}}, "metadata", "keys"),
        ({"metadata": {"x": object()}}, "metadata", "JSON"),
        ({"metadata": {"x": "a\x00"}}, "metadata", "NUL"),
    ],
)
def test_each_rule_names_the_field(fields: dict[str, Any], field: str, words: str) -> None:
    arguments: dict[str, Any] = {"run_id": "run", "metric": "loss", "value": 1.0, **fields}
    with pytest.raises(InvalidRecord, match=words) as caught:
        MetricRecord(**arguments)
    assert caught.value.field == field
    assert repr(field) in str(caught.value)


def test_values_become_floats_and_timestamps_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    record = MetricRecord("run", "loss", 3, 0, datetime(2025, 1, 1, 2, tzinfo=plus_two))
    assert type(record.value) is float
    assert record.timestamp == datetime(2025, 1, 1, tzinfo=UTC)
    assert record.timestamp.tzinfo is UTC


def test_default_timestamp_is_now_in_utc() -> None:
    before = datetime.now(UTC)
    record = MetricRecord("run", "loss", 1.0)
    assert before <= record.timestamp <= datetime.now(UTC)
    assert record.step is None and record.metadata == {}


def test_metadata_is_copied() -> None:
    metadata: dict[str, Any] = {"split": "train"}
    record = MetricRecord("run", "loss", 1.0, metadata=metadata)
    metadata["split"] = "eval"
    assert record.metadata == {"split": "train"}


def test_json_has_exactly_the_documented_keys() -> None:
    record = MetricRecord("run", "loss", 0.25, 12, T0, {"split": "train"})
    line = msgspec.json.encode(record)
    decoded = json.loads(line)
    assert list(decoded) == ["run_id", "metric", "value", "step", "timestamp", "metadata"]
    assert decoded["timestamp"] == "2025-03-04T05:06:07.891011Z"  # ISO 8601, offset Z = +00:00
    assert datetime.fromisoformat(decoded["timestamp"]) == T0
    assert msgspec.json.decode(line, type=MetricRecord) == record


def test_decoding_validates_too() -> None:
    with pytest.raises(msgspec.ValidationError, match="between"):
        msgspec.json.decode(
            b'{"run_id":"r","metric":"m","value":1.0,"step":-3,'
            b'"timestamp":"2025-01-01T00:00:00Z","metadata":{}}',
            type=MetricRecord,
        )
    with pytest.raises(msgspec.ValidationError, match="timezone-aware"):
        msgspec.json.decode(
            b'{"run_id":"r","metric":"m","value":1,"step":null,'
            b'"timestamp":"2025-01-01T00:00:00","metadata":{}}',
            type=MetricRecord,
        )


def test_a_batch_is_validated_whole_and_names_the_bad_position() -> None:
    good = {"run_id": "r", "metric": "m", "value": 1.0}
    assert len(coerce_batch([good, MetricRecord("r", "m", 2.0)])) == 2
    with pytest.raises(InvalidRecord, match="record #1 of the batch") as caught:
        coerce_batch([good, {"run_id": "r", "metric": "m"}])
    assert (caught.value.field, caught.value.index) == ("record", 1)
    with pytest.raises(InvalidRecord) as caught:
        coerce_batch([good, good, ("r", "m", 1.0)])
    assert (caught.value.field, caught.value.index) == ("record", 2)


def test_store_arguments_are_validated_like_records() -> None:
    from types import MappingProxyType

    from crucible.metrics import MemoryMetricsStore

    store = MemoryMetricsStore()
    for bad in ("split=train", [("split", "train")]):
        with pytest.raises(InvalidRecord) as caught:
            store.sync.record("run", "loss", 1.0, metadata=bad)  # type: ignore[arg-type]
        assert caught.value.field == "metadata"
    record = store.sync.record("run", "loss", 1.0, metadata=MappingProxyType({"a": 1}))
    assert record.metadata == {"a": 1}
