import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.telemetry import EventStore, Last, LastN, TelemetryEvent, TimeRange


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


@settings(deadline=None)
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


@settings(deadline=None)
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


def filled(timestamps: list[int]) -> EventStore:
    store = EventStore()
    for i, ts in enumerate(timestamps):
        store.insert(event(ts, success=i % 2 == 0, latency_ms=float(i), cost_usd=0.5))
    return store


def stamps(events: list[TelemetryEvent]) -> list[int]:
    return [e.timestamp for e in events]


def test_query_window_specs() -> None:
    store = filled([0, 10_000_000, 60_000_000, 61_000_000, 120_000_000])
    assert stamps(store.query_window(LastN(2))) == [61_000_000, 120_000_000]
    assert stamps(store.query_window(LastN(0))) == []
    last_minute = Last(1, "minutes", now=120_000_000)
    assert stamps(store.query_window(last_minute)) == [60_000_000, 61_000_000, 120_000_000]
    assert stamps(store.query_window(Last(1, "fortnights", now=120_000_000))) == []
    assert stamps(store.query_window(Last(-1, "seconds", now=120_000_000))) == []
    window = TimeRange(10_000_000, 61_000_000)
    assert stamps(store.query_window(window)) == [10_000_000, 60_000_000, 61_000_000]
    # A filter applies before the window: the newest 2 *successful* events.
    assert stamps(store.query_window(LastN(2), {"success": True})) == [60_000_000, 120_000_000]


@settings(deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=60), st.integers(1, 3_000))
def test_tumbling_windows_partition_the_events(timestamps: list[int], win: int) -> None:
    store = filled(timestamps)
    windows = store.windowed_metrics(win, win)
    assert sum(w.count for w in windows) == len(timestamps)
    assert sum(w.successes + w.failures for w in windows) == len(timestamps)
    for w in windows:
        inside = store.query({"time_range": (w.start, w.end - 1)})
        assert w.count == len(inside) > 0
        assert w.total_cost_usd == 0.5 * len(inside)


def test_windowed_metrics_refuses_non_positive_sizes() -> None:
    store = filled([1, 2, 3])
    assert store.windowed_metrics(0, 1) == []
    assert store.windowed_metrics(1, -1) == []
