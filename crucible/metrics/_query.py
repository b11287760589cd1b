"""Query semantics shared by every adapter, written once over plain lists of records.

The memory and JSONL stores run these functions directly; the SQL stores implement the same
rules in SQL, and the contract tests check that the answers are identical:

- read order is step ascending (records without a step last), then timestamp, then arrival;
- `steps` bounds are inclusive, `since` is inclusive and `until` exclusive;
- `history` splits the series into buckets by position and keeps each bucket's first
  minimum, first maximum and last point.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime

import attrs
import numpy as np

from crucible.stats import RunningStats

from ._errors import MetricNotFound
from ._record import MetricRecord, MetricSummary

__all__ = ["Query", "StepBounds", "downsample", "latest_by_metric", "order_key", "summarize"]

StepBounds = tuple[int | None, int | None] | range


@attrs.frozen
class Query:
    """A validated read filter."""

    run_id: str
    metric: str | None = None
    step_min: int | None = None
    step_max: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    empty: bool = False  # an empty `range` of steps: nothing can match

    @classmethod
    def build(
        cls,
        run_id: str,
        *,
        metric: str | None = None,
        steps: StepBounds | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Query:
        step_min, step_max, empty = _step_bounds(steps)
        for name, moment in (("since", since), ("until", until)):
            if moment is not None and (
                not isinstance(moment, datetime) or moment.utcoffset() is None
            ):
                raise ValueError(f"{name} must be a timezone-aware datetime, got {moment!r}")
        return cls(run_id, metric, step_min, step_max, since, until, empty)

    @property
    def has_step_filter(self) -> bool:
        return self.step_min is not None or self.step_max is not None

    def matches(self, record: MetricRecord) -> bool:
        if self.empty or record.run_id != self.run_id:
            return False
        if self.metric is not None and record.metric != self.metric:
            return False
        if self.has_step_filter:
            step = record.step
            if step is None:
                return False
            if self.step_min is not None and step < self.step_min:
                return False
            if self.step_max is not None and step > self.step_max:
                return False
        if self.since is not None and record.timestamp < self.since:
            return False
        return not (self.until is not None and record.timestamp >= self.until)

    def apply(self, records: Iterable[MetricRecord]) -> list[MetricRecord]:
        """The matching records, in read order."""
        run_id, metric = self.run_id, self.metric
        if self.empty or self.has_step_filter or self.since or self.until:
            return sort_records(r for r in records if self.matches(r))
        # The common reads, filtered without a method call per record.
        if metric is None:
            return sort_records(r for r in records if r.run_id == run_id)
        return sort_records(r for r in records if r.metric == metric and r.run_id == run_id)


def _step_bounds(steps: StepBounds | None) -> tuple[int | None, int | None, bool]:
    if steps is None:
        return None, None, False
    if isinstance(steps, range):
        if steps.step != 1:
            raise ValueError(f"steps must be a range with step 1, got {steps!r}")
        if len(steps) == 0:
            return None, None, True
        return _clamp(steps.start), _clamp(steps.stop - 1), False
    if isinstance(steps, tuple) and len(steps) == 2:
        low, high = steps
        for bound in (low, high):
            if bound is not None and (type(bound) is not int):
                raise ValueError(f"steps bounds must be ints or None, got {steps!r}")
        return _clamp(low), _clamp(high), False
    raise ValueError(f"steps must be a range or an inclusive (low, high) tuple, got {steps!r}")


def _clamp(bound: int | None) -> int | None:
    """Keep a bound inside the 64-bit column range; stored steps lie in [0, 2**63 - 1]."""
    return None if bound is None else min(max(bound, -1), 2**63 - 1)


def order_key(record: MetricRecord) -> tuple[bool, int, datetime]:
    """Sort key of the read order; a stable sort keeps arrival order for ties."""
    step = record.step
    return (step is None, step if step is not None else 0, record.timestamp)


def sort_records(records: Iterable[MetricRecord]) -> list[MetricRecord]:
    return sorted(records, key=order_key)


def latest_by_metric(ordered: Iterable[MetricRecord]) -> dict[str, MetricRecord]:
    """The last record of each metric, given records already in read order."""
    latest: dict[str, MetricRecord] = {}
    for record in ordered:
        latest[record.metric] = record
    return dict(sorted(latest.items()))


def summarize(run_id: str, metric: str, ordered: Sequence[MetricRecord]) -> MetricSummary:
    """Summary of one metric's records, given in read order."""
    if not ordered:
        raise MetricNotFound(run_id, metric)
    values = np.fromiter((r.value for r in ordered), dtype=np.float64, count=len(ordered))
    stats = RunningStats.of(values)  # records are validated finite: nothing is left out
    steps = [r.step for r in ordered if r.step is not None]
    std = stats.std(ddof=1)
    return MetricSummary(
        run_id=run_id,
        metric=metric,
        count=stats.count,
        mean=float(stats.mean if stats.mean is not None else math.nan),
        std=0.0 if std is None else float(std),
        min=float(stats.min if stats.min is not None else math.nan),
        max=float(stats.max if stats.max is not None else math.nan),
        last=ordered[-1].value,
        first_step=min(steps) if steps else None,
        last_step=max(steps) if steps else None,
    )


def check_max_points(max_points: int) -> None:
    if type(max_points) is not int or max_points < 3:
        raise ValueError(
            f"max_points must be an int >= 3 (each bucket keeps min, max and last), "
            f"got {max_points!r}"
        )


def bucket_count(max_points: int) -> int:
    return max_points // 3


def downsample(ordered: Sequence[MetricRecord], max_points: int) -> list[MetricRecord]:
    """At most `max_points` records of a series in read order, hiding no spike.

    The series is split by position into `max_points // 3` buckets (record i falls in bucket
    i * buckets // n); each bucket keeps its first minimum, first maximum and last record,
    in their original order. Deterministic: the same series always gives the same points.
    """
    check_max_points(max_points)
    n = len(ordered)
    if n <= max_points:
        return list(ordered)
    buckets = bucket_count(max_points)
    keep: set[int] = set()
    low = 0
    for bucket in range(buckets):
        # The first index whose bucket (i * buckets // n) is past this one.
        high = -(-(bucket + 1) * n // buckets)
        indices = range(low, high)
        keep.add(min(indices, key=lambda i: (ordered[i].value, i)))
        keep.add(min(indices, key=lambda i: (-ordered[i].value, i)))
        keep.add(high - 1)
        low = high
    return [ordered[i] for i in sorted(keep)]
