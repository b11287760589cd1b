"""The MetricsStore contract: every adapter must give the same answers.

Each test runs on memory, JSONL, SQLite and PostgreSQL, on asyncio and on trio.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import anyio
import numpy as np
import pytest

from crucible.metrics import (
    InvalidRecord,
    MetricNotFound,
    MetricRecord,
    MetricsStore,
    StoreClosed,
)

from .conftest import StoreFactory

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def test_is_a_metrics_store(store: MetricsStore) -> None:
    assert isinstance(store, MetricsStore)


async def test_a_record_round_trips_exactly(store: MetricsStore) -> None:
    written = await store.record(
        "run",
        "loss",
        0.1 + 0.2,
        step=3,
        metadata={"split": "train", "n": [1, 2]},
        timestamp=at(1.5),
    )
    bare = await store.record("run", "lr", 3, timestamp=at(2))  # an int value becomes a float
    assert await store.read("run", metric="loss") == [written]
    (lr,) = await store.read("run", metric="lr")
    assert lr == bare
    assert type(lr.value) is float and lr.value == 3.0 and lr.step is None and lr.metadata == {}


async def test_out_of_order_steps_are_all_kept_in_step_order(store: MetricsStore) -> None:
    steps = [5, 1, 3, 3, 0, 4, 2]
    for i, step in enumerate(steps):
        await store.record("run", "loss", float(i), step=step, timestamp=at(i))
    await store.record("run", "loss", 99.0, timestamp=at(-5))  # no step: read last
    read = await store.read("run", metric="loss")
    assert [r.step for r in read] == [0, 1, 2, 3, 3, 4, 5, None]
    # Equal steps keep time order: the record at index 2 (t=2) before index 3 (t=3).
    assert [r.value for r in read if r.step == 3] == [2.0, 3.0]


async def test_read_filters(store: MetricsStore) -> None:
    for step in range(10):
        await store.record("run", "loss", float(step), step=step, timestamp=at(step))
        await store.record("run", "acc", -float(step), step=step, timestamp=at(step))
        await store.record("other", "loss", 0.0, step=step, timestamp=at(step))
    await store.record("run", "loss", 100.0, timestamp=at(4.5))  # excluded by any step filter

    async def values(**query: object) -> list[float]:
        return [r.value for r in await store.read("run", metric="loss", **query)]  # type: ignore[arg-type]

    assert await values(steps=(2, 4)) == [2.0, 3.0, 4.0]
    assert await values(steps=range(2, 5)) == [2.0, 3.0, 4.0]
    assert await values(steps=(None, 1)) == [0.0, 1.0]
    assert await values(steps=(8, None)) == [8.0, 9.0]
    assert await values(steps=range(3, 3)) == []
    assert await values(steps=(-(2**70), 1)) == [0.0, 1.0]  # beyond 64 bits: still fine
    assert await values(steps=(8, 2**70)) == [8.0, 9.0]
    assert await values(steps=(-5, -1)) == []
    assert await values(since=at(7)) == [7.0, 8.0, 9.0]  # since is inclusive
    assert await values(until=at(2)) == [0.0, 1.0]  # until is exclusive
    assert await values(since=at(4), until=at(5)) == [4.0, 100.0]
    assert len(await store.read("run")) == 21
    assert await store.read("nobody") == []
    with pytest.raises(ValueError, match="step 1"):
        await store.read("run", steps=range(0, 10, 2))
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.read("run", since=datetime(2025, 1, 1))


async def test_latest_is_the_last_record_of_each_metric_in_step_order(
    store: MetricsStore,
) -> None:
    await store.record("run", "loss", 1.0, step=10, timestamp=at(0))
    await store.record("run", "loss", 2.0, step=3, timestamp=at(1))  # late, but an older step
    await store.record("run", "acc", 0.5, step=1, timestamp=at(0))
    await store.record("run", "acc", 0.7, step=1, timestamp=at(2))
    await store.record("other", "loss", 9.0, step=99)
    latest = await store.latest("run")
    assert {m: r.value for m, r in latest.items()} == {"acc": 0.7, "loss": 1.0}
    assert await store.latest("nobody") == {}


async def test_summary(store: MetricsStore) -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(size=200)
    steps = rng.permutation(200)
    await store.record_many(
        MetricRecord("run", "loss", float(v), int(s), at(int(s)))
        for v, s in zip(values, steps, strict=True)
    )
    summary = await store.summary("run", "loss")
    assert summary.count == 200
    assert summary.mean == pytest.approx(values.mean(), rel=1e-12)
    assert summary.std == pytest.approx(values.std(ddof=1), rel=1e-12)
    assert (summary.min, summary.max) == (values.min(), values.max())
    assert summary.last == values[np.argmax(steps)]
    assert (summary.first_step, summary.last_step) == (0, 199)
    await store.record("run", "single", 4.0)
    single = await store.summary("run", "single")
    assert (single.count, single.std, single.first_step, single.last_step) == (1, 0.0, None, None)
    with pytest.raises(MetricNotFound, match="'missing'"):
        await store.summary("run", "missing")


async def test_history_downsamples_without_hiding_spikes(store: MetricsStore) -> None:
    values = [float(i % 7) for i in range(1000)]
    values[123], values[876] = 1e6, -1e6  # the spikes a chart must show
    await store.record_many(MetricRecord("run", "loss", v, i, at(i)) for i, v in enumerate(values))
    history = await store.history("run", "loss", 30)
    assert len(history) <= 30
    kept = [r.value for r in history]
    assert 1e6 in kept and -1e6 in kept
    assert history[-1].step == 999  # the last point is always kept
    assert [r.step for r in history] == sorted(r.step for r in history if r.step is not None)
    assert await store.history("run", "loss", 30) == history  # deterministic
    assert len(await store.history("run", "loss", 5000)) == 1000
    with pytest.raises(ValueError, match="max_points"):
        await store.history("run", "loss", 2)


async def test_history_matches_the_reference_downsampling(store: MetricsStore) -> None:
    from crucible.metrics._query import downsample

    rng = np.random.default_rng(3)
    values, steps = rng.integers(0, 5, 301), rng.integers(0, 50, 301)
    records = [
        MetricRecord("run", "x", float(v), int(s), at(i))
        for i, (v, s) in enumerate(zip(values, steps, strict=True))
    ]
    await store.record_many(records)
    ordered = await store.read("run", metric="x")
    for max_points in (3, 4, 10, 31, 300, 301):
        assert await store.history("run", "x", max_points) == downsample(ordered, max_points)


async def test_runs_and_delete_run(store: MetricsStore) -> None:
    for run in ("b", "a", "c"):
        await store.record(run, "loss", 1.0, step=1)
        await store.record(run, "loss", 2.0, step=2)
    assert await store.runs() == ["a", "b", "c"]
    assert await store.delete_run("b") == 2
    assert await store.delete_run("b") == 0
    assert await store.runs() == ["a", "c"]
    assert await store.read("b") == []
    assert len(await store.read("a")) == 2


async def test_an_idempotency_key_stores_a_batch_once(store: MetricsStore) -> None:
    batch = [MetricRecord("run", "loss", float(i), i) for i in range(5)]
    await store.record_many(batch, idempotency_key="batch-1")
    await store.record_many(batch, idempotency_key="batch-1")
    await store.flush()
    await store.record_many(batch, idempotency_key="batch-1")
    await store.record_many(batch[:2], idempotency_key="batch-2")
    assert len(await store.read("run")) == 7


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"run_id": "", "metric": "m", "value": 1.0}, "run_id"),
        ({"run_id": "r", "metric": "", "value": 1.0}, "metric"),
        ({"run_id": "r", "metric": "m", "value": "1.0"}, "value"),
        ({"run_id": "r", "metric": "m", "value": float("nan")}, "value"),
        ({"run_id": "r", "metric": "m", "value": 1.0, "step": -1}, "step"),
        ({"run_id": "r", "metric": "m", "value": 1.0, "timestamp": "yesterday"}, "timestamp"),
    ],
)
async def test_one_bad_record_rejects_the_whole_batch(
    store: MetricsStore, bad: dict[str, object], field: str
) -> None:
    good = {"run_id": "r", "metric": "m", "value": 1.0}
    with pytest.raises(InvalidRecord) as caught:
        await store.record_many([good, good, bad, good])
    assert (caught.value.field, caught.value.index) == (field, 2)
    await store.flush()
    assert await store.read("r") == []


async def test_records_survive_reopening(factory: StoreFactory) -> None:
    if not factory.persistent:
        pytest.skip("the memory store keeps nothing across instances")
    first = await factory.open()
    await first.record("run", "loss", 1.5, step=1)
    await first.record_many([MetricRecord("run", "loss", 2.5, 2)], idempotency_key="k")
    await first.close()
    async with await factory.open() as second:
        await second.record_many([MetricRecord("run", "loss", 2.5, 2)], idempotency_key="k")
        assert [r.value for r in await second.read("run")] == [1.5, 2.5]


async def test_durable_mode_returns_after_the_record_is_stored(factory: StoreFactory) -> None:
    if factory.kind == "remote":
        pytest.skip(
            "the remote store has no durable mode: recording never waits for the network "
            "(records are durable in its offline buffer at flush, delivered in the background)"
        )
    async with await factory.open(**({} if factory.kind == "memory" else {"durable": True})) as s:
        await s.record("run", "loss", 1.0, step=0)
        await s.record_many([MetricRecord("run", "loss", 2.0, 1)])
        if factory.persistent:  # a second store sees it without any flush
            other = await factory.open()
            try:
                assert len(await other.read("run")) == 2
            finally:
                await other.close()


async def test_a_closed_store_refuses_work(store: MetricsStore) -> None:
    await store.record("run", "loss", 1.0)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreClosed):
        await store.record("run", "loss", 1.0)
    with pytest.raises(StoreClosed):
        await store.read("run")


async def test_the_sync_facade_records_from_a_plain_thread(store: MetricsStore) -> None:
    def train() -> None:
        for step in range(100):
            store.sync.record("run", "loss", 1.0 / (step + 1), step=step)
        store.sync.record_many([{"run_id": "run", "metric": "acc", "value": 0.9, "step": 99}])
        store.sync.flush()

    await anyio.to_thread.run_sync(train)
    assert len(await store.read("run", metric="loss")) == 100
    assert (await store.latest("run"))["acc"].value == 0.9


async def test_fifty_tasks_and_four_threads_lose_nothing(store: MetricsStore) -> None:
    per_task, per_thread = 40, 500

    async def task(n: int) -> None:
        for i in range(per_task):
            if i % 10 == 0:
                await store.record_many(
                    [MetricRecord(f"task-{n}", "m", float(i), i)], idempotency_key=f"{n}-{i}"
                )
            else:
                await store.record(f"task-{n}", "m", float(i), step=i)

    def thread(n: int) -> None:
        for i in range(per_thread):
            store.sync.record(f"thread-{n}", "m", float(i), step=i)

    async with anyio.create_task_group() as group:
        for n in range(4):
            group.start_soon(anyio.to_thread.run_sync, thread, n)
        for n in range(50):
            group.start_soon(task, n)
    await store.flush()
    for n in range(50):
        assert [r.step for r in await store.read(f"task-{n}")] == list(range(per_task))
    for n in range(4):
        assert [r.step for r in await store.read(f"thread-{n}")] == list(range(per_thread))


async def test_record_from_many_threads_at_once_is_safe(store: MetricsStore) -> None:
    barrier = threading.Barrier(4)

    def burst(n: int) -> None:
        barrier.wait()
        store.sync.record_many([MetricRecord("run", f"m{n}", float(i), i) for i in range(1000)])

    async with anyio.create_task_group() as group:
        for n in range(4):
            group.start_soon(anyio.to_thread.run_sync, burst, n)
    assert len(await store.read("run")) == 4000
