"""JsonlMetricsStore.truncate_after: what a resumed run does to metrics.jsonl and its keys.

The rule for idempotency keys: after `truncate_after(step)`, a key still counts as stored
while its batch keeps at least one record in the file. A batch whose records were all dropped
is forgotten: re-sending it with the same key stores it again, exactly once. A batch that
kept some records is not stored again (its kept records must not appear twice; its dropped
ones, after the step, are the resumed run's to record again).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crucible.metrics import JsonlMetricsStore, MetricRecord, Truncation

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def rec(step: int | None, metric: str = "loss", value: float = 1.0) -> MetricRecord:
    return MetricRecord("run", metric, value, step, T0 + timedelta(seconds=step or 0))


def encoded(*records: MetricRecord) -> bytes:
    return b"".join(msgspec.json.encode(r) + b"\n" for r in records)


async def test_drops_later_steps_and_a_torn_tail_and_keeps_everything_else(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    junk = b'{"not": "a record"}\n'
    path.write_bytes(encoded(rec(1), rec(2), rec(None, "note")) + junk)
    async with JsonlMetricsStore(path) as store:
        # Written behind the store's back after it opened (opening repairs a torn tail), as
        # by another writer that died mid-line: the truncation cuts and counts it.
        with path.open("ab") as other:
            other.write(encoded(rec(3), rec(2, "acc"), rec(5)) + b'{"run_id":"run","metric":"lo')
        assert await store.truncate_after(2) == Truncation(
            kept=5, dropped=3, at_step=frozenset({("loss", 2), ("acc", 2)})
        )
        assert path.read_bytes() == encoded(rec(1), rec(2), rec(None, "note")) + junk + encoded(
            rec(2, "acc")
        )
        assert await store.truncate_after(2) == Truncation(
            5, 0, frozenset({("loss", 2), ("acc", 2)})
        )
        await store.record("run", "loss", 3.0, step=3)  # appends behind the kept lines
        await store.flush()
        assert [r.step for r in await store.read("run", metric="loss")] == [1, 2, 3]


async def test_records_buffered_before_the_call_are_truncated_too(tmp_path: Path) -> None:
    async with JsonlMetricsStore(tmp_path / "m.jsonl", flush_interval=3600) as store:
        for step in range(6):
            await store.record("run", "loss", float(step), step=step)
        truncation = await store.truncate_after(3)
        assert (truncation.kept, truncation.dropped) == (4, 2)
        assert [r.step for r in await store.read("run")] == [0, 1, 2, 3]


async def test_a_missing_or_empty_file_truncates_to_nothing(tmp_path: Path) -> None:
    async with JsonlMetricsStore(tmp_path / "m.jsonl") as store:
        assert await store.truncate_after(0) == Truncation(0, 0, frozenset())
        with pytest.raises(TypeError):
            await store.truncate_after(1.5)  # type: ignore[arg-type]


async def test_keys_follow_their_batches(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    kept = [rec(s) for s in range(0, 3)]  # all at or before the step
    dropped = [rec(s) for s in range(5, 8)]  # all after it
    mixed = [rec(s, "acc") for s in range(2, 6)]  # straddles it
    async with JsonlMetricsStore(path) as store:
        await store.record_many(kept, idempotency_key="kept")
        await store.record_many(dropped, idempotency_key="dropped")
        await store.record_many(mixed, idempotency_key="mixed")
        await store.truncate_after(4)
        for key, batch in (("kept", kept), ("dropped", dropped), ("mixed", mixed)):
            await store.record_many(batch, idempotency_key=key)
        expected = sorted([*kept, *mixed[:3], *dropped], key=lambda r: (r.step, r.metric))
        got = await store.read("run")
        assert sorted(got, key=lambda r: (r.step, r.metric)) == expected
    # The marks on disk say the same to a later process.
    async with JsonlMetricsStore(path) as store:
        for key, batch in (("kept", kept), ("dropped", dropped), ("mixed", mixed)):
            await store.record_many(batch, idempotency_key=key)
        assert len(await store.read("run")) == len(expected)


async def test_another_store_on_the_file_follows_the_truncation(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    batch = [rec(s) for s in range(5, 8)]
    async with JsonlMetricsStore(path) as first, JsonlMetricsStore(path) as second:
        await second.record_many(batch, idempotency_key="b")
        await second.flush()
        await first.truncate_after(4)
        await second.record_many(batch, idempotency_key="b")  # forgotten: stored again
        await second.record_many(batch, idempotency_key="b")  # and only once
        await second.flush()
        assert [r.step for r in await first.read("run")] == [5, 6, 7]


batches = st.lists(
    st.tuples(
        st.lists(st.none() | st.integers(0, 9), min_size=1, max_size=4),
        st.none() | st.sampled_from(["k1", "k2", "k3", "k4"]),
    ),
    max_size=8,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(before=batches, step=st.integers(-1, 9), after=batches)
async def test_truncation_then_resent_batches_match_the_key_rule(
    tmp_path_factory: pytest.TempPathFactory,
    before: list[tuple[list[int | None], str | None]],
    step: int,
    after: list[tuple[list[int | None], str | None]],
) -> None:
    path = tmp_path_factory.mktemp("truncate") / "m.jsonl"
    model: list[tuple[MetricRecord, str | None]] = []  # the file's records and their key
    counter = iter(range(10**6))

    def make(steps: list[int | None]) -> list[MetricRecord]:
        return [rec(s, value=float(next(counter))) for s in steps]

    def add(records: list[MetricRecord], key: str | None) -> None:
        if key is None or all(k != key for _, k in model):
            model.extend((r, key) for r in records)

    async with JsonlMetricsStore(path) as store:
        for steps, key in before:
            records = make(steps)
            await store.record_many(records, idempotency_key=key)
            add(records, key)
        truncation = await store.truncate_after(step)
        survivors = [(r, k) for r, k in model if r.step is None or r.step <= step]
        assert truncation.dropped == len(model) - len(survivors)
        assert truncation.kept == len(survivors)
        assert truncation.at_step == {(r.metric, step) for r, _ in survivors if r.step == step}
        model = survivors
        for steps, key in after:
            records = make(steps)
            await store.record_many(records, idempotency_key=key)
            add(records, key)
        await store.flush()
    async with JsonlMetricsStore(path) as store:
        assert await store.read("run") == sorted(
            (r for r, _ in model), key=lambda r: (r.step is None, r.step or 0, r.timestamp)
        )
