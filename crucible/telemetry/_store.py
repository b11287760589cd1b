"""One experiment's events, kept in timestamp order, and the queries over them."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

from crucible import stats
from crucible.telemetry._event import EVENT_FIELDS, TelemetryEvent

__all__ = ["EventStore", "Last", "LastN", "TimeRange", "WindowSpec", "matches"]


class Last(msgspec.Struct, frozen=True):
    """The events of the last ``n`` seconds/minutes/hours before ``now`` (µs; default: the
    current time), both ends inclusive. ``n <= 0`` or an unknown unit selects nothing."""

    n: float
    unit: str
    now: int | None = None


class LastN(msgspec.Struct, frozen=True):
    """The newest ``n`` events, oldest first; ``n <= 0`` selects nothing."""

    n: int


class TimeRange(msgspec.Struct, frozen=True):
    """The events with ``start <= timestamp <= end`` (µs)."""

    start: int
    end: int


WindowSpec = Last | LastN | TimeRange

_MISSING = object()


def _timestamp(event: TelemetryEvent) -> int:
    return event.timestamp


def matches(event: TelemetryEvent, filters: Mapping[str, Any]) -> bool:
    """True if the event passes every filter (all are ANDed).

    ``event_name``, ``success`` and ``condition`` compare with the event's field;
    ``time_range`` is an inclusive ``(start_us, end_us)``; any other key matches when the
    event field of that name or the metadata key of that name equals the value.
    """
    for key, wanted in filters.items():
        if key == "time_range":
            start, end = wanted
            if not start <= event.timestamp <= end:
                return False
        elif key in EVENT_FIELDS:
            if getattr(event, key) != wanted and event.metadata.get(key, _MISSING) != wanted:
                return False
        elif event.metadata.get(key, _MISSING) != wanted:
            return False
    return True


class EventStore:
    """Events of one experiment, ascending by timestamp (ties keep arrival order).

    Events arrive almost always in order, so an insert is an append; a late one is placed with
    a binary search. Not thread-safe by itself: the Telemetry hub serialises access.
    """

    def __init__(self) -> None:
        self._events: list[TelemetryEvent] = []

    def insert(self, event: TelemetryEvent) -> None:
        events = self._events
        if not events or events[-1].timestamp <= event.timestamp:
            events.append(event)
        else:
            bisect.insort_right(events, event, key=_timestamp)

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[TelemetryEvent]:
        return iter(tuple(self._events))

    def all(self) -> list[TelemetryEvent]:
        """Every event, oldest first (a copy)."""
        return list(self._events)

    def query(self, filters: Mapping[str, Any] | None = None) -> list[TelemetryEvent]:
        """The events passing every filter (see ``matches``), oldest first."""
        if not filters:
            return self.all()
        events = self._events
        time_range = filters.get("time_range")
        if time_range is not None:
            # The store is sorted: cut the range with binary search before filtering the rest.
            start, end = time_range
            lo = bisect.bisect_left(events, start, key=_timestamp)
            hi = bisect.bisect_right(events, end, key=_timestamp)
            events = events[lo:hi]
        return [event for event in events if matches(event, filters)]

    def query_window(
        self, spec: WindowSpec, filters: Mapping[str, Any] | None = None
    ) -> list[TelemetryEvent]:
        """The events of a window, oldest first; with ``filters``, only matching events are
        considered (so ``LastN(5)`` gives the newest 5 *matching* events)."""
        events = self.query(filters)
        if isinstance(spec, Last):
            return stats.last(events, spec.n, spec.unit, now=spec.now)
        if isinstance(spec, LastN):
            return stats.last_n(events, spec.n)
        return stats.range(events, spec.start, spec.end)

    def windowed_metrics(self, win_us: int, step_us: int) -> list[stats.Window]:
        """Aggregates over windows ``[start, start + win_us)`` every ``step_us``
        (see ``crucible.stats.windowed``; empty windows are skipped)."""
        return stats.windowed(self._events, win_us, step_us)
