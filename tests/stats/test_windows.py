"""Windows over timestamped records: last, last_n, range, windowed."""

from __future__ import annotations

import builtins
import itertools
import math
import time
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.stats import (
    UNIT_MICROSECONDS,
    InvalidValueError,
    Window,
    last,
    last_n,
    range,
    windowed,
)


class Event(msgspec.Struct, frozen=True):
    """Shaped like a telemetry event: windows read these fields by attribute."""

    timestamp: int
    latency_ms: float | None = None
    cost_usd: float | None = None
    success: bool | None = None
    tag: int = 0


events_strategy = st.lists(
    st.builds(
        Event,
        timestamp=st.integers(min_value=0, max_value=10_000),
        latency_ms=st.none() | st.floats(min_value=0, max_value=1e4),
        cost_usd=st.none() | st.floats(min_value=0, max_value=10),
        success=st.sampled_from([True, False, None]),
    ),
    max_size=40,
).map(lambda evs: [msgspec.structs.replace(e, tag=i) for i, e in enumerate(evs)])
positive = st.integers(min_value=1, max_value=3_000)


def in_time_order(events: list[Event]) -> list[Event]:
    return sorted(events, key=lambda e: e.timestamp)


# -- selections --------------------------------------------------------------------------------


@settings(deadline=None)  # timing is for bench/, not for tests on a busy CI
@given(events_strategy, st.integers(-5, 50))
def test_last_n_is_the_newest_n_in_ascending_order(events: list[Event], n: int) -> None:
    result = last_n(events, n)
    expected = in_time_order(events)[-n:] if n > 0 else []
    assert result == expected
    assert len(result) == max(0, min(n, len(events)))


@settings(deadline=None)
@given(events_strategy, st.integers(0, 10_000), st.integers(0, 10_000))
def test_range_is_inclusive_and_ordered(events: list[Event], a: int, b: int) -> None:
    result = range(events, a, b)
    assert result == [e for e in in_time_order(events) if a <= e.timestamp <= b]


@settings(deadline=None)
@given(
    events_strategy,
    st.floats(min_value=-1, max_value=0.01),
    st.sampled_from(sorted(UNIT_MICROSECONDS)),
    st.integers(0, 10_000),
)
def test_last_selects_the_span_ending_now(
    events: list[Event], n: float, unit: str, now: int
) -> None:
    result = last(events, n, unit, now=now)
    if n <= 0:
        assert result == []
        return
    span = n * UNIT_MICROSECONDS[unit]
    assert result == [e for e in in_time_order(events) if now - span <= e.timestamp <= now]


def test_last_known_example_with_each_unit() -> None:
    minute = 60_000_000
    now = 100 * minute
    events = [{"timestamp": now - i * minute, "i": i} for i in (0, 1, 2, 5, 90)]
    assert [e["i"] for e in last(events, 2, "minutes", now=now)] == [2, 1, 0]
    assert [e["i"] for e in last(events, 120, "seconds", now=now)] == [2, 1, 0]
    assert [e["i"] for e in last(events, 1, "hours", now=now)] == [5, 2, 1, 0]
    assert last(events, 0, "minutes", now=now) == []
    assert last(events, -3, "minutes", now=now) == []
    assert last(events, 5, "fortnights", now=now) == []


def test_last_defaults_now_to_the_clock() -> None:
    now_us = time.time_ns() // 1_000
    events = [{"timestamp": now_us - 10_000_000}, {"timestamp": now_us - 7_200_000_000}]
    assert last(events, 1, "minutes") == events[:1]


def test_ties_keep_input_order() -> None:
    events = [{"timestamp": 5, "i": 0}, {"timestamp": 1, "i": 1}, {"timestamp": 5, "i": 2}]
    assert [e["i"] for e in range(events, 0, 10)] == [1, 0, 2]
    assert [e["i"] for e in last_n(events, 2)] == [0, 2]


def test_records_without_a_timestamp_are_named_in_the_error() -> None:
    with pytest.raises(InvalidValueError, match="timestamp"):
        last_n([{"timestamp": 1}, {"time": 2}], 1)
    with pytest.raises(InvalidValueError, match="timestamp"):
        range([{"timestamp": "yesterday"}], 0, 1)


# -- windowed --------------------------------------------------------------------------------


def reference_windows(events: list[Event], win: int, step: int) -> list[tuple[int, list[Event]]]:
    """The rule read plainly: step through every start, keep the non-empty windows."""
    if win <= 0 or step <= 0 or not events:
        return []
    stamps = [e.timestamp for e in events]
    first, newest = min(stamps), max(stamps)
    out = []
    start = first
    while start == first or start + win <= newest + step:
        members = [e for e in in_time_order(events) if start <= e.timestamp < start + win]
        if members:
            out.append((start, members))
        start += step
    return out


def assert_window_matches(window: Window, start: int, members: list[Event], win: int) -> None:
    assert window.start == start
    assert window.end == start + win
    assert window.count == len(members)
    latencies = [e.latency_ms for e in members if e.latency_ms is not None]
    if latencies:
        assert window.mean_latency_ms == pytest.approx(sum(latencies) / len(latencies))
    else:
        assert window.mean_latency_ms is None
    costs = [e.cost_usd for e in members if e.cost_usd is not None]
    assert window.total_cost_usd == pytest.approx(sum(costs))
    assert window.successes == sum(e.success is True for e in members)
    assert window.failures == sum(e.success is False for e in members)


@settings(deadline=None)
@given(events_strategy, positive, positive)
def test_windowed_matches_the_plain_reading_of_the_rule(
    events: list[Event], win: int, step: int
) -> None:
    windows = windowed(events, win, step)
    expected = reference_windows(events, win, step)
    assert len(windows) == len(expected)
    for window, (start, members) in zip(windows, expected, strict=True):
        assert_window_matches(window, start, members, win)


@settings(deadline=None)
@given(events_strategy, positive, positive)
def test_windows_do_not_depend_on_the_epoch(events: list[Event], win: int, step: int) -> None:
    # Real timestamps are ~1.8e15 µs: the arithmetic must stay exact there.
    offset = 1_764_000_000_000_000
    shifted = [msgspec.structs.replace(e, timestamp=e.timestamp + offset) for e in events]
    expected = [
        msgspec.structs.replace(w, start=w.start + offset, end=w.end + offset)
        for w in windowed(events, win, step)
    ]
    assert windowed(shifted, win, step) == expected


@settings(deadline=None)
@given(events_strategy, positive)
def test_tumbling_windows_partition_the_events(events: list[Event], win: int) -> None:
    windows = windowed(events, win, win)
    assert sum(w.count for w in windows) == len(events)
    for before, after in itertools.pairwise(windows):
        assert before.end <= after.start  # disjoint, ascending
    assert sum(w.successes for w in windows) == sum(e.success is True for e in events)
    assert sum(w.failures for w in windows) == sum(e.success is False for e in events)


@settings(deadline=None)
@given(events_strategy, positive, positive)
def test_sliding_windows_cover_every_event(events: list[Event], a: int, b: int) -> None:
    step, win = min(a, b), max(a, b)
    windows = windowed(events, win, step)
    for event in events:
        assert any(w.start <= event.timestamp < w.end for w in windows)
    for window in windows:
        assert window.count >= 1  # empty windows are skipped
        assert (window.start - windows[0].start) % step == 0


@settings(deadline=None)
@given(events_strategy, st.integers(-5, 0), st.integers(-5, 5))
def test_non_positive_win_or_step_gives_nothing(events: list[Event], bad: int, other: int) -> None:
    assert windowed(events, bad, other) == []
    assert windowed(events, other, bad) == []


def test_windowed_known_example() -> None:
    minute = 60_000_000
    events: list[dict[str, Any]] = [
        {"timestamp": i * minute, "latency_ms": 10.0 * i, "cost_usd": 0.5, "success": i != 3}
        for i in builtins.range(6)  # `range` is the window function here
    ]
    windows = windowed(events, 2 * minute, 2 * minute)
    assert [(w.start, w.count, w.successes, w.failures) for w in windows] == [
        (0, 2, 2, 0),
        (2 * minute, 2, 1, 1),
        (4 * minute, 2, 2, 0),
    ]
    assert [w.mean_latency_ms for w in windows] == [5.0, 25.0, 45.0]
    assert [w.total_cost_usd for w in windows] == [1.0, 1.0, 1.0]


def test_a_gap_is_skipped_without_empty_windows() -> None:
    events = [{"timestamp": 0}, {"timestamp": 10**12}]
    windows = windowed(events, 10, 1)
    assert [(w.start, w.count) for w in windows] == [(0, 1), (10**12 - 9, 1)]
    assert windows[0].mean_latency_ms is None
    assert windows[0].total_cost_usd == 0.0


def test_a_stream_shorter_than_win_minus_step_still_gets_its_window() -> None:
    events = [{"timestamp": 0}, {"timestamp": 30}]
    (window,) = windowed(events, 3_600, 60)
    assert (window.start, window.end, window.count) == (0, 3_600, 2)


def test_nonfinite_latency_and_cost_are_left_out() -> None:
    events = [
        {"timestamp": 0, "latency_ms": math.nan, "cost_usd": math.inf},
        {"timestamp": 1, "latency_ms": 4.0, "cost_usd": 1.0},
    ]
    (window,) = windowed(events, 10, 10)
    assert window.mean_latency_ms == 4.0
    assert window.total_cost_usd == 1.0
    assert window.count == 2


def test_empty_input_gives_nothing() -> None:
    assert windowed([], 10, 5) == []
    assert last_n([], 3) == []
    assert range([], 0, 1) == []
