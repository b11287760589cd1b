import math

import anyio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.actors import open_runtime
from crucible.metrics import (
    GetMetrics,
    Observe,
    ObserveMany,
    ObserveRequest,
    Reset,
    StreamingAggregator,
    StreamingMetrics,
)

finite = st.floats(-1e6, 1e6, allow_nan=False)


def test_empty_snapshot() -> None:
    snap = StreamingAggregator().snapshot()
    assert snap.latency.count == 0
    assert snap.latency.mean is None
    assert snap.latency.p99 is None
    assert (snap.cost.count, snap.cost.total, snap.cost.mean_per_request) == (0, 0.0, None)
    assert snap.reliability.total_requests == 0
    assert snap.reliability.success_rate is None
    assert snap.reliability.sla_99 is None
    assert snap.event_counts == {}
    assert snap.metrics == {}


@settings(deadline=None)
@given(st.lists(finite, min_size=1, max_size=80))
def test_named_metric_matches_numpy(values: list[float]) -> None:
    agg = StreamingAggregator()
    half = len(values) // 2
    for v in values[:half]:
        agg.observe("loss", v)
    agg.observe_many("loss", tuple(values[half:]))
    summary = agg.snapshot().metrics["loss"]
    array = np.asarray(values)
    assert summary.count == len(values)
    assert summary.mean == pytest.approx(array.mean(), rel=1e-9, abs=1e-6)
    if len(values) > 1:
        assert summary.std == pytest.approx(array.std(ddof=1), rel=1e-6, abs=1e-6)
    else:
        assert summary.std is None
    assert (summary.min, summary.max) == (array.min(), array.max())
    # Short streams are exact in the sketch: the inverted-CDF percentile, stored as float32.
    for p, got in ((50, summary.p50), (90, summary.p90), (95, summary.p95), (99, summary.p99)):
        expected = np.percentile(array, p, method="inverted_cdf")
        assert got == pytest.approx(float(np.float32(expected)), rel=1e-6, abs=1e-6)


def test_sketch_percentiles_on_a_long_stream_are_close() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=3.0, sigma=1.0, size=20_000)
    agg = StreamingAggregator()
    agg.observe_many("latency", tuple(values.tolist()))
    summary = agg.snapshot().metrics["latency"]
    for p, got in ((50, summary.p50), (95, summary.p95), (99, summary.p99)):
        assert got is not None
        assert abs(got - np.percentile(values, p)) / np.percentile(values, p) < 0.02


def test_nonfinite_and_bad_values_never_poison_the_stats() -> None:
    agg = StreamingAggregator()
    agg.observe("loss", 1.0)
    agg.observe("loss", math.nan)
    agg.observe("loss", math.inf)
    agg.observe("loss", 3.0)
    agg.observe("loss", "high")  # type: ignore[arg-type]
    agg.observe("loss", 1e300)  # beyond the sketch's float32 range
    agg.observe_many("loss", (2.0, "x"))  # type: ignore[arg-type]
    snap = agg.snapshot()
    summary = snap.metrics["loss"]
    assert (summary.count, summary.mean, summary.nonfinite) == (2, 2.0, 2)
    assert snap.rejected == 4


def test_telemetry_view() -> None:
    agg = StreamingAggregator()
    latencies = [10.0, 20.0, 30.0, 40.0]
    for i, latency in enumerate(latencies):
        agg.observe_request("llm.stop", latency_ms=latency, cost_usd=0.25, success=i != 3)
    agg.observe_request("llm.start")
    snap = agg.snapshot()
    assert snap.event_counts == {"llm.stop": 4, "llm.start": 1}
    assert snap.latency.count == 4
    assert snap.latency.mean == 25.0
    assert snap.latency.std == pytest.approx(np.std(latencies, ddof=1))
    assert (snap.latency.min, snap.latency.max) == (10.0, 40.0)
    assert snap.latency.p50 == 20.0  # exact (inverted CDF) while the stream is short
    assert snap.latency.p99 == 40.0
    assert snap.cost.count == 4
    assert snap.cost.total == 1.0
    assert snap.cost.mean_per_request == 0.25
    assert snap.cost.cost_per_1k_requests == 250.0
    assert snap.cost.cost_per_1m_requests == 250_000.0
    rel = snap.reliability
    assert (rel.total_requests, rel.successful, rel.failed) == (4, 3, 1)
    assert rel.success_rate == 0.75
    assert (rel.sla_99, rel.sla_999, rel.sla_9999) == (False, False, False)


def test_sla_flags() -> None:
    agg = StreamingAggregator()
    for i in range(1000):
        agg.observe_request("x", success=i != 0)
    rel = agg.snapshot().reliability
    assert (rel.sla_99, rel.sla_999, rel.sla_9999) == (True, True, False)


def test_reset_forgets_everything() -> None:
    agg = StreamingAggregator()
    agg.observe("loss", 1.0)
    agg.observe_request("x", latency_ms=1.0, cost_usd=1.0, success=True)
    agg.observe("loss", "bad")  # type: ignore[arg-type]
    agg.reset()
    assert agg.snapshot() == StreamingAggregator().snapshot()


@pytest.mark.anyio
async def test_actor_many_producers_cast_updates() -> None:
    producers, per_producer = 8, 250
    async with open_runtime() as rt:
        ref = await rt.spawn(StreamingMetrics(), name="streaming")

        async def produce(worker: int) -> None:
            for i in range(per_producer):
                await ref.cast(Observe("loss", float(worker * per_producer + i)))
                await ref.cast(ObserveRequest("step", latency_ms=1.0, success=True))

        async with anyio.create_task_group() as tg:
            for worker in range(producers):
                tg.start_soon(produce, worker)
        await ref.cast(ObserveMany("other", (1.0, 2.0, 3.0)))
        snap = await ref.call(GetMetrics())
        total = producers * per_producer
        assert snap.metrics["loss"].count == total
        assert snap.metrics["loss"].mean == pytest.approx((total - 1) / 2)
        assert snap.metrics["other"].mean == 2.0
        assert snap.event_counts == {"step": total}
        assert snap.reliability.success_rate == 1.0

        await ref.call(Reset())
        after = await ref.call(GetMetrics())
        assert after.metrics == {}
        assert after.event_counts == {}
        await ref.stop()


@pytest.mark.anyio
async def test_a_bad_value_does_not_crash_the_actor() -> None:
    async with open_runtime() as rt:
        ref = await rt.spawn(StreamingMetrics())
        await ref.cast(Observe("loss", "nope"))  # type: ignore[arg-type]
        await ref.cast(Observe("loss", 2.0))
        snap = await ref.call(GetMetrics())
        assert ref.alive
        assert (snap.metrics["loss"].count, snap.rejected) == (1, 1)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), finite), max_size=40))
def test_order_of_casts_does_not_change_counts(updates: list[tuple[str, float]]) -> None:
    forward, backward = StreamingAggregator(), StreamingAggregator()
    for metric, value in updates:
        forward.observe(metric, value)
    for metric, value in reversed(updates):
        backward.observe(metric, value)
    f, b = forward.snapshot().metrics, backward.snapshot().metrics
    assert f.keys() == b.keys()
    for name in f:
        assert f[name].count == b[name].count
        assert f[name].mean == pytest.approx(b[name].mean, rel=1e-9, abs=1e-6)
