import csv
import io
import json
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.telemetry import TelemetryEvent, read_jsonl, to_csv, to_jsonl


def make_event(ts: int, name: str = "req_llm.request.stop", **fields: Any) -> TelemetryEvent:
    fields.setdefault("experiment_id", "e")
    fields.setdefault("experiment_name", "n")
    fields.setdefault("condition", "default")
    fields.setdefault("event_id", f"{ts:032x}")
    return TelemetryEvent(event_name=name, timestamp=ts, **fields)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
keys = st.text(alphabet="abcxyz", min_size=1, max_size=4)
payload = st.dictionaries(
    keys, st.one_of(scalars, st.dictionaries(keys, scalars, max_size=3)), max_size=4
)


@st.composite
def events(draw: st.DrawFn) -> TelemetryEvent:
    return make_event(
        draw(st.integers(0, 2**53)),
        draw(st.sampled_from(["a.stop", "b.start", 'x,y"z'])),
        measurements=draw(payload),
        metadata=draw(payload),
        latency_ms=draw(st.none() | st.floats(0, 1e6)),
        success=draw(st.none() | st.booleans()),
        tags=tuple(draw(st.lists(st.text(max_size=5), max_size=3))),
        model=draw(st.none() | st.text(max_size=8)),
    )


@settings(deadline=None)
@given(st.lists(events(), max_size=8))
def test_jsonl_round_trips(recorded: list[TelemetryEvent]) -> None:
    text = to_jsonl(recorded)
    decoded = [msgspec.convert(json.loads(line), TelemetryEvent) for line in text.split("\n")[:-1]]
    assert decoded == recorded


def test_read_jsonl_skips_blank_and_archive_header(tmp_path: Path) -> None:
    recorded = [make_event(1), make_event(2, metadata={"a": 1})]
    path = tmp_path / "x.jsonl"
    path.write_text('{"type":"experiment","id":"e"}\n\n' + to_jsonl(recorded))
    assert read_jsonl(path) == recorded


def _expected_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(list(value), separators=(",", ":"), ensure_ascii=False)


def _flat(prefix: str, value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(_flat(f"{prefix}_{key}", item))
        else:
            out[f"{prefix}_{key}"] = item
    return out


@settings(deadline=None)
@given(st.lists(events(), min_size=1, max_size=8))
def test_csv_round_trips(recorded: list[TelemetryEvent]) -> None:
    text = to_csv(recorded)
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == sorted(reader.fieldnames or [])
    rows = list(reader)
    assert len(rows) == len(recorded)
    for row, event in zip(rows, recorded, strict=True):
        expected = {
            f: getattr(event, f)
            for f in TelemetryEvent.__struct_fields__
            if f not in ("metadata", "measurements")
        }
        expected |= _flat("metadata", event.metadata) | _flat("measurement", event.measurements)
        for column, cell in row.items():
            assert cell == _expected_cell(expected.get(column))


def test_csv_quoting_and_flattening() -> None:
    event = make_event(
        5,
        metadata={"note": 'say "hi", then\nleave', "a": {"b": 1}},
        measurements={"x": 2.5},
        success=None,
    )
    rows = list(csv.DictReader(io.StringIO(to_csv([event]))))
    assert rows[0]["metadata_note"] == 'say "hi", then\nleave'
    assert rows[0]["metadata_a_b"] == "1"
    assert rows[0]["measurement_x"] == "2.5"
    assert rows[0]["success"] == ""
    assert "metadata" not in rows[0]


def test_non_serialisable_values_are_dropped_from_jsonl() -> None:
    event = make_event(1, metadata={"ok": 1, "bad": object(), "nan": float("nan")})
    (line,) = to_jsonl([event]).split("\n")[:-1]
    assert json.loads(line)["metadata"] == {"ok": 1, "nan": None}
