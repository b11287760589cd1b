"""Windows over timestamped records: last/last_n/range selections and windowed aggregates.

Records are anything with a numeric `timestamp` in microseconds since the epoch (UTC): a
Mapping with a "timestamp" key or an object with a `timestamp` attribute (telemetry events).
Input need not be sorted; results are in ascending timestamp order, ties in input order.

Note: this module defines `range`, which shadows the builtin inside it; it never needs
the builtin.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import TypeVar

import msgspec

from ._records import field_of, timestamp_of

T = TypeVar("T")

#: Microseconds per unit accepted by `last`.
UNIT_MICROSECONDS: dict[str, int] = {
    "seconds": 1_000_000,
    "minutes": 60_000_000,
    "hours": 3_600_000_000,
}


class Window(msgspec.Struct, frozen=True, kw_only=True):
    """Aggregates of the records with `start <= timestamp < end` (µs).

    `mean_latency_ms` is None when no record in the window has a finite `latency_ms`;
    `total_cost_usd` sums the finite `cost_usd` values (0.0 when none); `successes` and
    `failures` count records whose `success` is True / False (None counts as neither).
    """

    start: int | float
    end: int | float
    count: int
    mean_latency_ms: float | None
    total_cost_usd: float
    successes: int
    failures: int


def _in_time_order(records: Iterable[T]) -> tuple[list[T], list[int | float]]:
    # Read each timestamp once; list.sort is stable and linear on already-ordered input
    # (the common case: an event store).
    keyed = [(timestamp_of(record), record) for record in records]
    keyed.sort(key=itemgetter(0))
    return [record for _, record in keyed], [stamp for stamp, _ in keyed]


def last(records: Iterable[T], n: float, unit: str, now: int | float | None = None) -> list[T]:
    """The records of the last `n` `unit`s: `now - n*unit <= timestamp <= now`.

    `unit` is "seconds", "minutes" or "hours"; `now` is µs since the epoch (default: the
    current time). `n <= 0` or an unknown unit gives an empty list, like an empty window.
    """
    unit_us = UNIT_MICROSECONDS.get(unit)
    if unit_us is None or not n > 0:
        return []
    if now is None:
        now = time.time_ns() // 1_000
    return range(records, now - n * unit_us, now)


def last_n(records: Iterable[T], n: int) -> list[T]:
    """The newest `n` records, oldest first; `n <= 0` gives an empty list."""
    if n <= 0:
        return []
    ordered, _ = _in_time_order(records)
    return ordered[-n:]


def range(records: Iterable[T], start: int | float, end: int | float) -> list[T]:
    """The records with `start <= timestamp <= end` (both ends inclusive), oldest first.

    Empty when `start > end`.
    """
    if start > end:
        return []
    ordered, stamps = _in_time_order(records)
    lo = bisect.bisect_left(stamps, start)
    hi = bisect.bisect_right(stamps, end)
    return ordered[lo:hi]


def windowed(records: Iterable[object], win: int | float, step: int | float) -> list[Window]:
    """Sliding (or tumbling, when `step == win`) windows of width `win` every `step` µs.

    Windows are `[start, start + win)`. The first starts at the first record's timestamp and
    each next one `step` later; windows stop once `start + win > last + step`, where `last` is
    the newest timestamp, so no window runs past the data by more than a step. Empty windows
    are skipped. `win <= 0` or `step <= 0` (or no records) gives an empty list.

    One departure from that rule: the first window is always produced. Read literally, the rule
    gives no window at all for a stream shorter than `win - step` (say one minute of events in
    one-hour windows stepped every minute); the first window then holds every record instead.
    With `step <= win` every record is therefore in at least one window, and with
    `step == win` in exactly one.
    """
    if not (win > 0 and step > 0):
        return []
    ordered, stamps = _in_time_order(records)
    if not ordered:
        return []
    first, newest = stamps[0], stamps[-1]
    windows: list[Window] = []
    k = 0
    while True:
        start = first + k * step
        if k > 0 and start + win > newest + step:
            break
        lo = bisect.bisect_left(stamps, start)
        hi = bisect.bisect_left(stamps, start + win)
        if hi > lo:
            windows.append(_aggregate(ordered[lo:hi], start, start + win))
            k += 1
        elif lo == len(stamps):
            break
        else:
            # Jump over the empty stretch to the first window that holds the next record
            # (start > t - win), instead of stepping through a possibly huge gap one by one.
            # Floor division stays exact on integer microseconds, where / would round.
            k = max(k + 1, int((stamps[lo] - win - first) // step) + 1)
    return windows


def _aggregate(records: Sequence[object], start: int | float, end: int | float) -> Window:
    latencies: list[float] = []
    costs: list[float] = []
    successes = failures = 0
    for record in records:
        latency = field_of(record, "latency_ms")
        if _is_finite_number(latency):
            latencies.append(latency)
        cost = field_of(record, "cost_usd")
        if _is_finite_number(cost):
            costs.append(cost)
        success = field_of(record, "success")
        if success is True:
            successes += 1
        elif success is False:
            failures += 1
    return Window(
        start=start,
        end=end,
        count=len(records),
        mean_latency_ms=math.fsum(latencies) / len(latencies) if latencies else None,
        total_cost_usd=math.fsum(costs),
        successes=successes,
        failures=failures,
    )


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
