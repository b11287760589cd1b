"""Property: any sequence of operations on any adapter answers like MemoryMetricsStore."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crucible.metrics import MemoryMetricsStore, MetricRecord, MetricsStore

from .conftest import StoreFactory

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 1, 1, tzinfo=UTC)
moments = st.integers(0, 5).map(lambda s: T0 + timedelta(seconds=s))
values = st.floats(-1e6, 1e6, allow_nan=False)
metadata = st.dictionaries(
    st.text("abc", max_size=3),
    st.integers(-10, 10) | st.text("xyz", max_size=3) | st.booleans() | st.none(),
    max_size=2,
)
records = st.builds(
    MetricRecord,
    run_id=st.sampled_from(["a", "b"]),
    metric=st.sampled_from(["loss", "acc"]),
    value=values,
    step=st.none() | st.integers(0, 6),
    timestamp=moments,
    metadata=metadata,
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("record"), records),
        st.tuples(
            st.just("record_many"),
            st.lists(records, max_size=5),
            st.none() | st.sampled_from(["k1", "k2", "k3"]),
        ),
        st.tuples(st.just("flush")),
        st.tuples(
            st.just("read"),
            st.sampled_from(["a", "b"]),
            st.none() | st.sampled_from(["loss", "acc"]),
            st.none() | st.tuples(st.none() | st.integers(0, 6), st.none() | st.integers(0, 6)),
            st.none() | moments,
            st.none() | moments,
        ),
        st.tuples(st.just("latest"), st.sampled_from(["a", "b"])),
        st.tuples(st.just("history"), st.sampled_from(["a", "b"]), st.integers(3, 7)),
        st.tuples(st.just("summary"), st.sampled_from(["a", "b"])),
        st.tuples(st.just("delete_run"), st.sampled_from(["a", "b"])),
    ),
    max_size=25,
)


def prefixed(record: MetricRecord, prefix: str) -> MetricRecord:
    return MetricRecord(
        prefix + record.run_id,
        record.metric,
        record.value,
        record.step,
        record.timestamp,
        record.metadata,
    )


async def apply(
    store: MetricsStore, op: tuple[Any, ...], prefix: str, *, scoped_keys: bool = False
) -> Any:
    """Run one operation; return what it answered (None for writes)."""
    kind = op[0]
    if kind == "record":
        r = prefixed(op[1], prefix)
        await store.record(
            r.run_id, r.metric, r.value, step=r.step, metadata=r.metadata, timestamp=r.timestamp
        )
    elif kind == "record_many":
        key = None if op[2] is None else prefix + op[2]
        batch = [prefixed(r, prefix) for r in op[1]]
        if key is not None and scoped_keys:
            # The metric service scopes keys per run: the same key in another run is that
            # run's own. The reference models it with one keyed call per run.
            for run in dict.fromkeys(r.run_id for r in batch):
                part = [r for r in batch if r.run_id == run]
                await store.record_many(part, idempotency_key=f"{run}\x00{key}")
        else:
            await store.record_many(batch, idempotency_key=key)
    elif kind == "flush":
        await store.flush()
    elif kind == "read":
        _, run, metric, steps, since, until = op
        return await store.read(prefix + run, metric=metric, steps=steps, since=since, until=until)
    elif kind == "latest":
        return await store.latest(prefix + op[1])
    elif kind == "history":
        return {m: await store.history(prefix + op[1], m, op[2]) for m in ("loss", "acc")}
    elif kind == "delete_run":
        return await store.delete_run(prefix + op[1])
    elif kind == "summary":
        latest = await store.latest(prefix + op[1])
        return {m: await store.summary(prefix + op[1], m) for m in latest}
    return None


def assert_same(kind: str, got: Any, expected: Any) -> None:
    if kind == "summary":  # PostgreSQL sums on the server: allow float rounding
        assert got.keys() == expected.keys()
        for metric, summary in expected.items():
            other = got[metric]
            assert (other.count, other.min, other.max, other.last) == (
                summary.count,
                summary.min,
                summary.max,
                summary.last,
            )
            assert (other.first_step, other.last_step) == (summary.first_step, summary.last_step)
            assert other.mean == pytest.approx(summary.mean, rel=1e-9, abs=1e-300)
            assert other.std == pytest.approx(summary.std, rel=1e-6, abs=1e-300)
    else:
        assert got == expected


@pytest.mark.parametrize("factory", ["jsonl", "sqlite", "postgres", "remote"], indirect=True)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
async def test_any_sequence_matches_the_memory_store(
    factory: StoreFactory, ops: list[tuple[Any, ...]]
) -> None:
    prefix = uuid.uuid4().hex[:8] + "-"  # examples share the backing file or database
    reference = MemoryMetricsStore()
    async with await factory.open() as store:
        for op in ops:
            expected = await apply(reference, op, prefix, scoped_keys=factory.kind == "remote")
            got = await apply(store, op, prefix)
            assert_same(op[0], got, expected)
        runs = [r for r in await store.runs() if r.startswith(prefix)]
        assert runs == await reference.runs()
