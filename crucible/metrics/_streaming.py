"""The StreamingMetrics actor: live statistics for many producers, in O(1) memory per metric.

``StreamingAggregator`` holds the logic (plain, synchronous, testable on its own);
``StreamingMetrics`` is the actor that owns one, so producers anywhere can cast updates to it
without locks. Two views:

- per named metric (``Observe``/``ObserveMany``): a RunningStats (count, mean, sample std,
  min, max; NaN/inf counted apart) and a quantile sketch (p50/p90/p95/p99);
- the telemetry view (``ObserveRequest``, one per recorded event): latency, cost,
  reliability with SLA flags, and a count per event name.
"""

from __future__ import annotations

import attrs
import msgspec

from crucible.actors import Actor, Request, handler
from crucible.stats import InvalidValueError, QuantileSketch, RunningStats

__all__ = [
    "CostSummary",
    "GetMetrics",
    "LatencySummary",
    "Observe",
    "ObserveMany",
    "ObserveRequest",
    "ReliabilitySummary",
    "Reset",
    "SeriesSummary",
    "StreamingAggregator",
    "StreamingMetrics",
    "StreamingSnapshot",
]


# -- the snapshot ----------------------------------------------------------------------------


class SeriesSummary(msgspec.Struct, frozen=True):
    """One named metric. Statistics are None until a finite value arrived; ``nonfinite``
    counts the NaN/inf values left out. Percentiles come from the quantile sketch (exact
    while short, then within its stated rank error)."""

    count: int
    mean: float | None = None
    std: float | None = None  # sample (ddof=1); None below 2 values
    min: float | None = None
    max: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    nonfinite: int = 0


class LatencySummary(msgspec.Struct, frozen=True):
    """Milliseconds over the requests that had a latency; percentiles from the sketch."""

    count: int
    mean: float | None = None
    std: float | None = None  # sample (ddof=1)
    min: float | None = None
    max: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class CostSummary(msgspec.Struct, frozen=True):
    """USD over the requests that had a cost."""

    count: int
    total: float = 0.0
    mean_per_request: float | None = None
    cost_per_1k_requests: float | None = None
    cost_per_1m_requests: float | None = None


class ReliabilitySummary(msgspec.Struct, frozen=True):
    """Over the requests whose success is known; rates and SLA flags None when none is."""

    total_requests: int
    successful: int
    failed: int
    success_rate: float | None = None
    sla_99: bool | None = None
    sla_999: bool | None = None
    sla_9999: bool | None = None


class StreamingSnapshot(msgspec.Struct, frozen=True):
    """Everything StreamingMetrics knows; ``rejected`` counts values that were not usable
    numbers (refused without touching any statistic)."""

    latency: LatencySummary
    cost: CostSummary
    reliability: ReliabilitySummary
    event_counts: dict[str, int]
    metrics: dict[str, SeriesSummary]
    rejected: int = 0


# -- messages --------------------------------------------------------------------------------


class Observe(msgspec.Struct, frozen=True):
    """Cast: one value of a named metric."""

    metric: str
    value: float


class ObserveMany(msgspec.Struct, frozen=True):
    """Cast: a batch of values of a named metric (folded in vectorised)."""

    metric: str
    values: tuple[float, ...]


class ObserveRequest(msgspec.Struct, frozen=True):
    """Cast: one request/event for the telemetry view; unknown parts are None."""

    event_name: str
    latency_ms: float | None = None
    cost_usd: float | None = None
    success: bool | None = None


class GetMetrics(Request[StreamingSnapshot], frozen=True):
    """Call: the current snapshot."""


class Reset(Request[None], frozen=True):
    """Call: forget everything observed so far."""


# -- the logic -------------------------------------------------------------------------------


@attrs.define
class _Series:
    stats: RunningStats = attrs.field(factory=RunningStats)
    sketch: QuantileSketch = attrs.field(factory=QuantileSketch)

    # The sketch goes first: it refuses more (non-numbers, and values beyond float32) and
    # refuses before changing anything, so a refused value leaves the two in step.

    def add(self, value: float) -> None:
        self.sketch.update(value)
        self.stats.update(value)

    def add_many(self, values: tuple[float, ...]) -> None:
        self.sketch.update_many(values)
        self.stats.update_many(values)

    def quantile(self, q: float) -> float | None:
        return self.sketch.quantile(q) if self.stats.count else None


@attrs.define
class StreamingAggregator:
    """What the StreamingMetrics actor keeps; usable directly in single-threaded code."""

    _metrics: dict[str, _Series] = attrs.field(factory=dict)
    _latency: _Series = attrs.field(factory=_Series)
    _cost: RunningStats = attrs.field(factory=RunningStats)
    _successful: int = 0
    _failed: int = 0
    _event_counts: dict[str, int] = attrs.field(factory=dict)
    _rejected: int = 0

    # Bad values are counted, never raised: in the actor a raise would crash it and lose
    # every producer's statistics for one producer's mistake.

    def observe(self, metric: str, value: float) -> None:
        try:
            self._series(metric).add(value)
        except InvalidValueError:
            self._rejected += 1

    def observe_many(self, metric: str, values: tuple[float, ...]) -> None:
        try:
            self._series(metric).add_many(values)
        except InvalidValueError:
            self._rejected += len(values)

    def _series(self, metric: str) -> _Series:
        series = self._metrics.get(metric)
        if series is None:
            series = self._metrics[metric] = _Series()
        return series

    def observe_request(
        self,
        event_name: str,
        latency_ms: float | None = None,
        cost_usd: float | None = None,
        success: bool | None = None,
    ) -> None:
        self._event_counts[event_name] = self._event_counts.get(event_name, 0) + 1
        try:
            if latency_ms is not None:
                self._latency.add(latency_ms)
            if cost_usd is not None:
                self._cost.update(cost_usd)
        except InvalidValueError:
            self._rejected += 1
        if success is True:
            self._successful += 1
        elif success is False:
            self._failed += 1

    def reset(self) -> None:
        fresh = StreamingAggregator()
        for attribute in attrs.fields(StreamingAggregator):
            setattr(self, attribute.name, getattr(fresh, attribute.name))

    def snapshot(self) -> StreamingSnapshot:
        return StreamingSnapshot(
            latency=self._latency_summary(),
            cost=self._cost_summary(),
            reliability=self._reliability_summary(),
            event_counts=dict(self._event_counts),
            metrics={name: _summary(series) for name, series in self._metrics.items()},
            rejected=self._rejected,
        )

    def _latency_summary(self) -> LatencySummary:
        stats = self._latency.stats
        return LatencySummary(
            count=stats.count,
            mean=stats.mean,
            std=stats.std(ddof=1),
            min=stats.min,
            max=stats.max,
            p50=self._latency.quantile(0.50),
            p95=self._latency.quantile(0.95),
            p99=self._latency.quantile(0.99),
        )

    def _cost_summary(self) -> CostSummary:
        cost = self._cost
        mean = cost.mean
        return CostSummary(
            count=cost.count,
            total=cost.sum if cost.count else 0.0,
            mean_per_request=mean,
            cost_per_1k_requests=None if mean is None else mean * 1_000,
            cost_per_1m_requests=None if mean is None else mean * 1_000_000,
        )

    def _reliability_summary(self) -> ReliabilitySummary:
        known = self._successful + self._failed
        if known == 0:
            return ReliabilitySummary(0, 0, 0)
        rate = self._successful / known
        return ReliabilitySummary(
            total_requests=known,
            successful=self._successful,
            failed=self._failed,
            success_rate=rate,
            sla_99=rate >= 0.99,
            sla_999=rate >= 0.999,
            sla_9999=rate >= 0.9999,
        )


def _summary(series: _Series) -> SeriesSummary:
    stats = series.stats
    return SeriesSummary(
        count=stats.count,
        mean=stats.mean,
        std=stats.std(ddof=1),
        min=stats.min,
        max=stats.max,
        p50=series.quantile(0.50),
        p90=series.quantile(0.90),
        p95=series.quantile(0.95),
        p99=series.quantile(0.99),
        nonfinite=stats.nonfinite,
    )


# -- the actor -------------------------------------------------------------------------------


class StreamingMetrics(Actor[StreamingAggregator]):
    """Live metrics that many producers cast to: ``Observe``, ``ObserveMany``,
    ``ObserveRequest`` (casts), ``GetMetrics`` and ``Reset`` (calls)."""

    async def init(self) -> StreamingAggregator:
        return StreamingAggregator()

    @handler
    def observe(self, msg: Observe) -> None:
        self.state.observe(msg.metric, msg.value)

    @handler
    def observe_many(self, msg: ObserveMany) -> None:
        self.state.observe_many(msg.metric, msg.values)

    @handler
    def observe_request(self, msg: ObserveRequest) -> None:
        self.state.observe_request(msg.event_name, msg.latency_ms, msg.cost_usd, msg.success)

    @handler
    def get_metrics(self, msg: GetMetrics) -> StreamingSnapshot:
        return self.state.snapshot()

    @handler
    def reset(self, msg: Reset) -> None:
        self.state.reset()
