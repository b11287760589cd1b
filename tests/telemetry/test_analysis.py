import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.telemetry import TelemetryEvent, calculate_metrics, compare_metrics


def make_event(ts: int, name: str = "req_llm.request.stop", **fields: Any) -> TelemetryEvent:
    fields.setdefault("experiment_id", "e")
    fields.setdefault("experiment_name", "n")
    fields.setdefault("condition", "default")
    fields.setdefault("event_id", f"{ts:032x}")
    return TelemetryEvent(event_name=name, timestamp=ts, **fields)


finite = st.floats(0, 1e6, allow_nan=False)


def test_empty_experiment() -> None:
    metrics = calculate_metrics([])
    assert metrics.summary.total_events == 0
    assert (metrics.summary.start_us, metrics.summary.end_us) == (None, None)
    assert metrics.summary.duration_seconds == 0.0
    assert metrics.latency.count == 0
    assert metrics.latency.mean is None
    assert (metrics.cost.count, metrics.cost.total) == (0, 0.0)
    assert metrics.reliability.success_rate is None
    assert metrics.reliability.sla_99 is None
    assert metrics.tokens.count == 0
    assert metrics.events == {}


def test_summary_and_event_counts() -> None:
    events = [
        make_event(1_000_000, "a.start"),
        make_event(3_500_000, "a.stop"),
        make_event(2_000_000, "a.start"),
    ]
    metrics = calculate_metrics(events)
    assert metrics.summary.total_events == 3
    assert (metrics.summary.start_us, metrics.summary.end_us) == (1_000_000, 3_500_000)
    assert metrics.summary.duration_seconds == 2.5
    assert metrics.summary.event_types == metrics.events == {"a.start": 2, "a.stop": 1}


@settings(deadline=None)
@given(st.lists(finite, min_size=1, max_size=50))
def test_latency_matches_numpy(latencies: list[float]) -> None:
    events = [make_event(i, latency_ms=v) for i, v in enumerate(latencies)]
    events.append(make_event(len(latencies), latency_ms=None))  # ignored
    lat = calculate_metrics(events).latency
    array = np.asarray(latencies)
    assert lat.count == len(latencies)
    assert lat.mean == pytest.approx(array.mean(), rel=1e-9, abs=1e-9)
    assert lat.std == pytest.approx(array.std(ddof=0), rel=1e-6, abs=1e-6)
    assert (lat.min, lat.max) == (array.min(), array.max())
    for p, got in ((50, lat.p50), (90, lat.p90), (95, lat.p95), (99, lat.p99)):
        assert got == pytest.approx(np.percentile(array, p), rel=1e-9, abs=1e-9)
    assert lat.median == lat.p50


def test_cost() -> None:
    events = [make_event(i, cost_usd=c) for i, c in enumerate([0.1, 0.2, 0.6])]
    events.append(make_event(9, cost_usd=None))
    cost = calculate_metrics(events).cost
    assert cost.count == 3
    assert cost.total == pytest.approx(0.9)
    assert cost.mean == pytest.approx(0.3)
    assert cost.median == pytest.approx(0.2)
    assert cost.cost_per_1k_requests == pytest.approx(300.0)
    assert cost.cost_per_1m_requests == pytest.approx(300_000.0)


@pytest.mark.parametrize(
    ("successes", "failures", "flags"),
    [
        (99, 1, (True, False, False)),
        (98, 2, (False, False, False)),
        (999, 1, (True, True, False)),
        (10, 0, (True, True, True)),
    ],
)
def test_reliability_over_known_outcomes(
    successes: int, failures: int, flags: tuple[bool, bool, bool]
) -> None:
    events = [make_event(i, success=True) for i in range(successes)]
    events += [make_event(i, success=False) for i in range(failures)]
    events += [make_event(0, success=None)] * 5  # unknown outcomes are left out of rates
    rel = calculate_metrics(events).reliability
    assert rel.total_events == successes + failures + 5
    assert rel.known == successes + failures
    assert (rel.successful, rel.failed) == (successes, failures)
    assert rel.success_rate == pytest.approx(successes / (successes + failures))
    assert rel.failure_rate == pytest.approx(failures / (successes + failures))
    assert (rel.sla_99, rel.sla_999, rel.sla_9999) == flags


def test_tokens() -> None:
    events = [
        make_event(1, metadata={"tokens": {"prompt": 10, "completion": 30, "total": 40}}),
        make_event(2, metadata={"tokens": {"prompt": 20, "completion": 10}}),  # total derived
        make_event(3, metadata={"tokens": "many"}),  # malformed: not counted
        make_event(4),
    ]
    tokens = calculate_metrics(events).tokens
    assert tokens.count == 2
    assert (tokens.total_prompt, tokens.total_completion, tokens.total) == (30, 40, 70)
    assert (tokens.mean_prompt, tokens.mean_completion, tokens.mean_total) == (15, 20, 35)


def _metrics(latency: float | None, success_rate: float | None, cost: float, n: int) -> object:
    events = []
    for i in range(n):
        success = None if success_rate is None else i < success_rate * n
        events.append(make_event(i, latency_ms=latency, cost_usd=cost / n, success=success))
    return calculate_metrics(events)


def test_compare_baseline_first() -> None:
    base = _metrics(100.0, 0.5, 1.0, 10)
    faster = _metrics(80.0, 1.0, 3.0, 20)
    comparison = compare_metrics({"base": base, "fast": faster})  # type: ignore[dict-item]
    assert comparison.baseline == "base"
    (treatment,) = comparison.treatments
    assert treatment.experiment_id == "fast"
    assert treatment.latency_improvement_pct == pytest.approx(20.0)  # 20% faster
    assert treatment.cost_difference_usd == pytest.approx(2.0)
    assert treatment.success_rate_improvement_pct == pytest.approx(100.0)
    assert treatment.event_count_difference == 10


def test_compare_pct_is_none_without_a_baseline_value() -> None:
    no_latency = _metrics(None, None, 1.0, 4)
    zero_latency = _metrics(0.0, 0.0, 1.0, 4)
    other = _metrics(10.0, 0.5, 1.0, 4)
    for base in (no_latency, zero_latency):
        (t,) = compare_metrics({"b": base, "t": other}).treatments  # type: ignore[dict-item]
        assert t.latency_improvement_pct is None
        assert t.success_rate_improvement_pct is None
        assert math.isclose(t.cost_difference_usd, 0.0, abs_tol=1e-12)


def test_compare_needs_two() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        compare_metrics({"only": calculate_metrics([])})
