import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from crucible.telemetry import EventStore, TelemetryEvent


def event(ts: int, name: str = "a.stop", **fields: Any) -> TelemetryEvent:
    return TelemetryEvent(
        event_id=f"{ts:032x}",
        event_name=name,
        timestamp=ts,
        experiment_id="e",
        experiment_name="n",
        condition=fields.pop("condition", "default"),
        **fields,
    )


@given(st.lists(st.integers(0, 1_000), max_size=60))
def test_store_keeps_time_order_and_every_event(timestamps: list[int]) -> None:
    store = EventStore()
    for i, ts in enumerate(timestamps):
        store.insert(event(ts, sample_id=i))
    stored = store.all()
    assert [e.timestamp for e in stored] == sorted(timestamps)
    assert sorted(e.sample_id for e in stored) == list(range(len(timestamps)))
    # Equal timestamps keep arrival order.
    for a, b in itertools.pairwise(stored):
        if a.timestamp == b.timestamp:
            assert a.sample_id < b.sample_id


@given(
    st.lists(st.integers(0, 100), max_size=40),
    st.integers(0, 100),
    st.integers(0, 100),
)
def test_time_range_is_inclusive(timestamps: list[int], a: int, b: int) -> None:
    store = EventStore()
    for ts in timestamps:
        store.insert(event(ts))
    got = [e.timestamp for e in store.query({"time_range": (a, b)})]
    assert got == sorted(ts for ts in timestamps if a <= ts <= b)


def test_filters_are_anded_over_fields_and_metadata() -> None:
    store = EventStore()
    store.insert(event(1, "llm.stop", success=True, model="gpt-4", metadata={"run": "x"}))
    store.insert(event(2, "llm.stop", success=False, model="gpt-4", metadata={"run": "y"}))
    store.insert(event(3, "llm.start", success=None, condition="b", metadata={"run": "x"}))
    store.insert(event(4, "llm.stop", success=True, condition="b", metadata={"model": "m"}))

    def ts(filters: dict[str, Any]) -> list[int]:
        return [e.timestamp for e in store.query(filters)]

    assert ts({}) == [1, 2, 3, 4]
    assert ts({"event_name": "llm.stop"}) == [1, 2, 4]
    assert ts({"event_name": "llm.stop", "success": True}) == [1, 4]
    assert ts({"condition": "b"}) == [3, 4]
    assert ts({"run": "x"}) == [1, 3]  # a metadata key
    assert ts({"model": "gpt-4"}) == [1, 2]  # an event field
    assert ts({"model": "m"}) == [4]  # the same name as a metadata key
    assert ts({"run": "x", "time_range": (2, 10)}) == [3]
    assert ts({"nothing": 1}) == []
    assert ts({"success": None}) == [3]
