"""Analysis of stored events: calculate_metrics and compare_experiments.

Stored data is complete, so this uses exact statistics: percentiles by linear interpolation
(crucible.stats.percentiles) and the population standard deviation (ddof=0), as the original
analysis did; the live StreamingMetrics view uses the sample std and a sketch instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from crucible.stats import RunningStats, percentiles
from crucible.telemetry._enrichment import _number
from crucible.telemetry._event import TelemetryEvent

__all__ = [
    "Comparison",
    "CostMetrics",
    "ExperimentMetrics",
    "LatencyMetrics",
    "ReliabilityMetrics",
    "Summary",
    "TokenMetrics",
    "TreatmentComparison",
    "calculate_metrics",
    "compare_metrics",
]


class Summary(msgspec.Struct, frozen=True):
    total_events: int
    start_us: int | None  # the first event's timestamp (µs, UTC)
    end_us: int | None
    duration_seconds: float
    event_types: dict[str, int]


class LatencyMetrics(msgspec.Struct, frozen=True):
    """Milliseconds, over the events that have a latency."""

    count: int
    mean: float | None = None
    median: float | None = None
    std: float | None = None  # population (ddof=0)
    min: float | None = None
    max: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None


class CostMetrics(msgspec.Struct, frozen=True):
    """USD, over the events that have a cost."""

    count: int
    total: float
    mean: float | None = None
    median: float | None = None
    cost_per_1k_requests: float | None = None
    cost_per_1m_requests: float | None = None


class ReliabilityMetrics(msgspec.Struct, frozen=True):
    """Rates are over the events whose success is known (``known``); None when there are none."""

    total_events: int
    known: int
    successful: int
    failed: int
    success_rate: float | None
    failure_rate: float | None
    sla_99: bool | None
    sla_999: bool | None
    sla_9999: bool | None


class TokenMetrics(msgspec.Struct, frozen=True):
    """Over the events with a ``tokens`` mapping in their metadata."""

    count: int
    total_prompt: float = 0
    total_completion: float = 0
    total: float = 0
    mean_prompt: float | None = None
    mean_completion: float | None = None
    mean_total: float | None = None


class ExperimentMetrics(msgspec.Struct, frozen=True):
    summary: Summary
    latency: LatencyMetrics
    cost: CostMetrics
    reliability: ReliabilityMetrics
    tokens: TokenMetrics
    events: dict[str, int]  # count per event name


class TreatmentComparison(msgspec.Struct, frozen=True):
    """One treatment against the baseline. Percentages are None when the baseline value is
    None or 0. A positive latency improvement means the treatment is faster (lower mean
    latency); a positive success-rate improvement means it succeeds more often."""

    experiment_id: str
    latency_improvement_pct: float | None
    cost_difference_usd: float
    success_rate_improvement_pct: float | None
    event_count_difference: int


class Comparison(msgspec.Struct, frozen=True):
    baseline: str
    treatments: list[TreatmentComparison]
    metrics: dict[str, ExperimentMetrics]


def _summary(events: Sequence[TelemetryEvent], counts: dict[str, int]) -> Summary:
    if not events:
        return Summary(0, None, None, 0.0, counts)
    start = min(e.timestamp for e in events)
    end = max(e.timestamp for e in events)
    return Summary(len(events), start, end, (end - start) / 1_000_000, counts)


def _latency(events: Sequence[TelemetryEvent]) -> LatencyMetrics:
    values = [e.latency_ms for e in events if e.latency_ms is not None]
    if not values:
        return LatencyMetrics(0)
    stats = RunningStats.of(values)
    ps = percentiles(values, (50, 90, 95, 99))
    return LatencyMetrics(
        count=stats.count,
        mean=stats.mean,
        median=ps[50],
        std=stats.std(ddof=0),
        min=stats.min,
        max=stats.max,
        p50=ps[50],
        p90=ps[90],
        p95=ps[95],
        p99=ps[99],
    )


def _cost(events: Sequence[TelemetryEvent]) -> CostMetrics:
    values = [e.cost_usd for e in events if e.cost_usd is not None]
    if not values:
        return CostMetrics(0, 0.0)
    total = sum(values)
    mean = total / len(values)
    return CostMetrics(
        count=len(values),
        total=total,
        mean=mean,
        median=percentiles(values, (50,))[50],
        cost_per_1k_requests=mean * 1_000,
        cost_per_1m_requests=mean * 1_000_000,
    )


def reliability(total_events: int, successful: int, failed: int) -> ReliabilityMetrics:
    """Rates and SLA flags (99%, 99.9%, 99.99%) from success/failure counts."""
    known = successful + failed
    if known == 0:
        return ReliabilityMetrics(total_events, 0, 0, 0, None, None, None, None, None)
    rate = successful / known
    return ReliabilityMetrics(
        total_events=total_events,
        known=known,
        successful=successful,
        failed=failed,
        success_rate=rate,
        failure_rate=failed / known,
        sla_99=rate >= 0.99,
        sla_999=rate >= 0.999,
        sla_9999=rate >= 0.9999,
    )


def _reliability(events: Sequence[TelemetryEvent]) -> ReliabilityMetrics:
    successful = sum(1 for e in events if e.success is True)
    failed = sum(1 for e in events if e.success is False)
    return reliability(len(events), successful, failed)


def _token_counts(tokens: Mapping[str, Any]) -> tuple[float, float, float]:
    prompt = _number(tokens.get("prompt")) or 0.0
    completion = _number(tokens.get("completion")) or 0.0
    total = _number(tokens.get("total"))
    return prompt, completion, prompt + completion if total is None else total


def _tokens(events: Sequence[TelemetryEvent]) -> TokenMetrics:
    rows = [
        _token_counts(tokens)
        for e in events
        if isinstance(tokens := e.metadata.get("tokens"), Mapping)
    ]
    if not rows:
        return TokenMetrics(0)
    n = len(rows)
    prompt = sum(r[0] for r in rows)
    completion = sum(r[1] for r in rows)
    total = sum(r[2] for r in rows)
    return TokenMetrics(n, prompt, completion, total, prompt / n, completion / n, total / n)


def calculate_metrics(events: Sequence[TelemetryEvent]) -> ExperimentMetrics:
    """Every metric of a set of stored events (an experiment's, or a query's result)."""
    counts = dict(Counter(e.event_name for e in events))
    return ExperimentMetrics(
        summary=_summary(events, counts),
        latency=_latency(events),
        cost=_cost(events),
        reliability=_reliability(events),
        tokens=_tokens(events),
        events=counts,
    )


def _pct(baseline: float | None, treatment: float | None) -> float | None:
    if baseline is None or treatment is None or baseline == 0:
        return None
    return (treatment - baseline) / baseline * 100


def compare_metrics(metrics: Mapping[str, ExperimentMetrics]) -> Comparison:
    """Compare experiments' metrics; the first (in mapping order) is the baseline."""
    if len(metrics) < 2:
        raise ValueError(
            f"comparing needs at least 2 experiments (a baseline and a treatment), "
            f"got {len(metrics)}"
        )
    (baseline_id, base), *rest = metrics.items()
    treatments = []
    for experiment_id, treated in rest:
        latency_change = _pct(base.latency.mean, treated.latency.mean)
        treatments.append(
            TreatmentComparison(
                experiment_id=experiment_id,
                latency_improvement_pct=None if latency_change is None else -latency_change,
                cost_difference_usd=treated.cost.total - base.cost.total,
                success_rate_improvement_pct=_pct(
                    base.reliability.success_rate, treated.reliability.success_rate
                ),
                event_count_difference=(treated.summary.total_events - base.summary.total_events),
            )
        )
    return Comparison(baseline_id, treatments, dict(metrics))
