"""Runs as records: listing (filter, sort, cursor paging) equals a reference model written
here, on the memory, SQLite and PostgreSQL stores; the crashed status; updates; and a
database made before runs existed opening with its data and runs."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crucible.metrics import (
    CheckpointRef,
    ConfigFilter,
    InvalidRun,
    MetricRange,
    MetricRecord,
    ModelVersionRef,
    RunNotFound,
    RunQuery,
    RunSpec,
    RunStore,
    RunUpdate,
    SqliteMetricsStore,
)

pytestmark = pytest.mark.anyio

RUN_STORES = pytest.mark.parametrize("factory", ["memory", "sqlite", "postgres"], indirect=True)
BASE = datetime(2030, 1, 1, tzinfo=UTC)  # explicit heartbeats: far past every real clock
STALE = 1800.0
CONFIG_VALUES = [0, 1, 1.0, 0.5, "0.5", "adam", True, False, None]


@attrs.define
class Model:
    """What a run should look like, computed without the store."""

    id: str
    name: str
    started: datetime
    tags: list[str]
    config: dict[str, Any]
    status: str
    heartbeat: datetime | None  # None: only the real clock's (long before BASE)
    points: dict[str, list[tuple[int, float]]]

    def effective(self, now: datetime) -> str:
        beat = self.heartbeat
        if self.status == "running" and (beat is None or beat < now - timedelta(seconds=STALE)):
            return "crashed"
        return self.status

    def stat(self, metric: str, aggregate: str) -> float | int | None:
        points = self.points.get(metric)
        if not points:
            return None
        values = [v for _, v in points]
        return {
            "count": len(values),
            "min": min(values),
            "max": max(values),
            "last": max(points)[1],  # steps are distinct: the highest step is last
        }[aggregate]


def config_equal(value: object, wanted: object) -> bool:
    """JSON equality: booleans, null and strings only equal their own kind; numbers by value."""
    kinds = (bool, type(None), str)
    for kind in kinds:
        if isinstance(value, kind) or isinstance(wanted, kind):
            return isinstance(value, kind) and isinstance(wanted, kind) and value == wanted
    return value == wanted


def expected_ids(models: list[Model], query: RunQuery) -> list[str]:
    assert query.now is not None
    chosen = []
    for run in models:
        if query.status and run.effective(query.now) not in query.status:
            continue
        if not all(tag in run.tags for tag in query.tags):
            continue
        if not all(
            c.path[0] in run.config and config_equal(run.config[c.path[0]], c.value)
            for c in query.config
        ):
            continue
        ranges_ok = True
        for r in query.metrics:
            got = run.stat(r.metric, r.aggregate)
            if (
                got is None
                or (r.low is not None and got < r.low)
                or (r.high is not None and got > r.high)
            ):
                ranges_ok = False
        if ranges_ok:
            chosen.append(run)
    key: Any
    if query.sort == "started_at":
        key = lambda run: run.started  # noqa: E731
    elif query.sort == "name":
        key = lambda run: run.name  # noqa: E731
    else:
        key = lambda run: run.stat(query.sort_metric or "", query.sort_aggregate)  # noqa: E731
    with_key = sorted((r for r in chosen if key(r) is not None), key=lambda r: (key(r), r.id))
    without = sorted((r for r in chosen if key(r) is None), key=lambda r: r.id)
    if query.desc:
        with_key.reverse()
        without.reverse()
    return [r.id for r in with_key + without]


run_ids = st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "Z", "ab"]), unique=True)
runs_strategy = run_ids.flatmap(
    lambda ids: st.tuples(
        *[
            st.fixed_dictionaries(
                {
                    "id": st.just(i),
                    "name": st.sampled_from([None, "x", "y", "é", "X"]),
                    "started": st.integers(0, 3),
                    "tags": st.lists(st.sampled_from(["t1", "t2", "t3"]), unique=True),
                    "config": st.dictionaries(
                        st.sampled_from(["lr", "opt"]), st.sampled_from(CONFIG_VALUES)
                    ),
                    "end": st.sampled_from([None, "completed", "failed"]),
                    "beat": st.sampled_from([None, 0, 1, 2, 3]),
                    "points": st.dictionaries(
                        st.sampled_from(["loss", "acc"]),
                        st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.5, -1.0]), max_size=4),
                    ),
                }
            )
            for i in ids
        ]
    )
)
aggregates = st.sampled_from(["last", "min", "max", "count"])
queries = st.fixed_dictionaries(
    {
        "status": st.lists(st.sampled_from(["running", "completed", "failed", "crashed"])),
        "tags": st.lists(st.sampled_from(["t1", "t2", "t3"]), max_size=2, unique=True),
        "config": st.lists(
            st.builds(
                ConfigFilter, st.sampled_from([("lr",), ("opt",)]), st.sampled_from(CONFIG_VALUES)
            ),
            max_size=1,
        ),
        "metrics": st.lists(
            st.builds(
                MetricRange,
                st.sampled_from(["loss", "acc"]),
                aggregates,
                st.sampled_from([None, -1.0, 0.5, 1.0]),
                st.sampled_from([None, 0.5, 2.0, 3.0]),
            ),
            max_size=1,
        ),
        "sort": st.sampled_from(["started_at", "name", "metric"]),
        "sort_metric": st.sampled_from(["loss", "acc"]),
        "sort_aggregate": aggregates,
        "descending": st.sampled_from([None, True, False]),
        "limit": st.integers(1, 4),
        "now_hours": st.integers(0, 4),
    }
)


async def populate(store: Any, runs: tuple[dict[str, Any], ...], project: str) -> list[Model]:
    models = []
    for spec in runs:
        run_id = f"{project}-{spec['id']}"
        started = BASE - timedelta(days=1) + timedelta(hours=spec["started"])
        await store.create_run(
            RunSpec(
                id=run_id,
                name=spec["name"],
                project=project,
                tags=spec["tags"],
                config=spec["config"],
                started_at=started,
            )
        )
        points = {
            metric: list(enumerate(values)) for metric, values in spec["points"].items() if values
        }
        await store.record_many(
            [
                MetricRecord(run_id, metric, value, step, BASE)
                for metric, series in points.items()
                for step, value in series
            ]
        )
        if spec["end"] is not None:
            await store.update_run(run_id, RunUpdate(status=spec["end"]))
        beat = None
        if spec["beat"] is not None:
            beat = BASE + timedelta(hours=spec["beat"])
            await store.heartbeat(run_id, beat)
        models.append(
            Model(
                run_id,
                spec["name"] or run_id,
                started,
                spec["tags"],
                spec["config"],
                spec["end"] or "running",
                beat,
                points,
            )
        )
    return models


@RUN_STORES
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(runs=runs_strategy, raw=queries)
async def test_listing_equals_the_reference_model(
    store: Any, runs: tuple[dict[str, Any], ...], raw: dict[str, Any]
) -> None:
    project = uuid.uuid4().hex[:8]  # examples share the store: each lists only its own runs
    models = await populate(store, runs, project)
    query = RunQuery(
        status=tuple(raw["status"]),
        tags=tuple(raw["tags"]),
        project=project,
        config=tuple(raw["config"]),
        metrics=tuple(raw["metrics"]),
        sort=raw["sort"],
        sort_metric=raw["sort_metric"] if raw["sort"] == "metric" else None,
        sort_aggregate=raw["sort_aggregate"],
        descending=raw["descending"],
        limit=raw["limit"],
        now=BASE + timedelta(hours=raw["now_hours"]),
        stale_after=STALE,
    )
    expected = expected_ids(models, query)
    got: list[str] = []
    cursor = None
    for _ in range(len(models) + 2):
        page = await store.list_runs(attrs.evolve(query, cursor=cursor))
        assert len(page.runs) <= query.limit
        got.extend(run.id for run in page.runs)
        for run in page.runs:
            model = next(m for m in models if m.id == run.id)
            assert run.status == model.effective(query.now)  # type: ignore[arg-type]
            assert {m: s.count for m, s in run.metrics.items()} == {
                m: len(p) for m, p in model.points.items()
            }
        cursor = page.next_cursor
        if cursor is None:
            break
    assert got == expected


@RUN_STORES
async def test_a_run_is_created_updated_resumed_and_read(store: Any) -> None:
    assert isinstance(store, RunStore)
    spec = RunSpec(id="r1", name="first", tags=["a", "a", "b"], config={"lr": 0.1})
    run, created = await store.create_run(spec)
    assert created and run.status == "running" and run.tags == ["a", "b"] and run.name == "first"
    await store.record_many([MetricRecord("r1", "loss", 2.0 - i, i) for i in range(3)])
    checkpoint = CheckpointRef(name="000010", step=10, state_path="s", metrics={"loss": 0.5})
    version = ModelVersionRef(name="m", version="1", stage="staging")
    run = await store.update_run(
        "r1",
        RunUpdate(status="completed", summary={"eval/acc": 0.9}, checkpoints=[checkpoint]),
    )
    assert run.status == "completed" and run.ended_at is not None
    assert run.summary == {"eval/acc": 0.9} and run.checkpoints == [checkpoint]
    again = CheckpointRef(name="000010", step=10, state_path="s2")
    run = await store.update_run("r1", RunUpdate(checkpoints=[again], model_versions=[version]))
    assert run.checkpoints == [again] and run.model_versions == [version]  # replaced by name
    stat = run.metrics["loss"]
    assert (stat.count, stat.min, stat.max, stat.last, stat.last_step) == (3, 0.0, 2.0, 0.0, 2)
    run, created = await store.create_run(RunSpec(id="r1", notes="resumed"))
    assert not created and run.status == "running" and run.ended_at is None
    assert run.config == {"lr": 0.1} and run.notes == "resumed" and run.summary == {"eval/acc": 0.9}
    fetched = await store.get_run("r1")
    assert fetched.checkpoints == [again] and fetched.metrics["loss"].count == 3
    # No heartbeat for longer than the timeout: crashed, computed at read time.
    later = datetime.now(UTC) + timedelta(seconds=61)
    assert (await store.get_run("r1", now=later, stale_after=60)).status == "crashed"
    await store.heartbeat("r1", later)
    assert (await store.get_run("r1", now=later, stale_after=60)).status == "running"
    await store.delete_run("r1")
    with pytest.raises(RunNotFound):
        await store.get_run("r1")


@RUN_STORES
async def test_bad_runs_and_queries_are_refused_naming_the_field(store: Any) -> None:
    cases: list[tuple[Any, str]] = [
        (store.create_run(RunSpec(id="bad/id")), "id"),
        (store.create_run(RunSpec(id="r", tags=["x" * 65])), "tags"),
        (store.create_run(RunSpec(id="r", config={"x": float("nan")})), "config"),
        (store.create_run(RunSpec(id="r", started_at=datetime(2025, 1, 1))), "started_at"),
        (store.update_run("r", RunUpdate(summary={"x": float("inf")})), "summary"),
        (store.list_runs(RunQuery(limit=0)), "limit"),
        (
            store.list_runs(RunQuery(sort="metric", sort_metric="loss", sort_aggregate="latest")),
            "sort",
        ),
        (store.list_runs(RunQuery(cursor="garbage")), "cursor"),
        (store.list_runs(RunQuery(config=(ConfigFilter(("a b",), 1),))), "config"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidRun) as caught:
            await call
        assert caught.value.field == field
    page = await store.list_runs(RunQuery(limit=1))
    assert page.runs == []
    with pytest.raises(RunNotFound):
        await store.update_run("nope", RunUpdate(notes="x"))
    with pytest.raises(RunNotFound):
        await store.heartbeat("nope")


async def test_a_cursor_of_another_sort_is_refused(tmp_path: Path) -> None:
    async with SqliteMetricsStore(tmp_path / "m.db") as store:
        for name in "abc":
            await store.create_run(RunSpec(id=name))
        page = await store.list_runs(RunQuery(sort="name", limit=1))
        assert page.next_cursor is not None
        with pytest.raises(InvalidRun, match="another sort"):
            await store.list_runs(RunQuery(sort="started_at", limit=1, cursor=page.next_cursor))


# The schema of crucible.metrics before runs existed (main at 6836e93), written by hand so
# the test does not depend on the code under test to make the old database.
_OLD_SCHEMA = [
    """CREATE TABLE metrics (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL,
       metric TEXT NOT NULL, value REAL NOT NULL, step INTEGER, ts INTEGER NOT NULL,
       metadata TEXT)""",
    "CREATE INDEX metrics_run_metric_step ON metrics (run_id, metric, step)",
    "CREATE INDEX metrics_run_ts ON metrics (run_id, ts)",
    "CREATE TABLE metric_batches (key TEXT PRIMARY KEY)",
    "PRAGMA user_version = 1",
]


async def test_a_database_made_before_runs_opens_with_its_data_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    for statement in _OLD_SCHEMA:
        old.execute(statement)
    micros = int((BASE - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000)
    rows = [("old", "loss", 3.0 - i, i, micros + i, None) for i in range(3)]
    rows.append(("old", "loss", 9.0, None, micros, '{"k": 1}'))  # step-less: read last
    rows.append(("other", "acc", 0.5, 7, micros, None))
    old.executemany(
        "INSERT INTO metrics (run_id, metric, value, step, ts, metadata) VALUES (?,?,?,?,?,?)",
        rows,
    )
    old.execute("INSERT INTO metric_batches VALUES ('k1')")
    old.commit()
    old.close()
    async with SqliteMetricsStore(path) as store:
        assert len(await store.read("old")) == 4
        assert await store.runs() == ["old", "other"]
        latest = await store.latest("old")
        assert latest["loss"].value == 9.0 and latest["loss"].metadata == {"k": 1}
        run = await store.get_run("old")
        stat = run.metrics["loss"]
        assert (stat.count, stat.min, stat.max, stat.last) == (4, 1.0, 9.0, 9.0)
        assert run.started_at == BASE and run.name == "old"
        # The old idempotency key still dedupes; new points keep the summary going.
        await store.record_many([MetricRecord("old", "loss", 0.0, 5)], idempotency_key="k1")
        await store.record_many([MetricRecord("old", "loss", -1.0, 6)])
        stat = (await store.get_run("old")).metrics["loss"]
        assert (stat.count, stat.min, stat.last) == (5, -1.0, 9.0)
        page = await store.list_runs(RunQuery(sort="name"))
        assert [r.id for r in page.runs] == ["old", "other"]
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == 2


@RUN_STORES
@pytest.mark.parametrize("descending", [False, True])
async def test_paging_by_a_metric_reaches_the_runs_without_it(store: Any, descending: bool) -> None:
    for run_id, values in (("p", [1.0]), ("q", []), ("r", [2.0]), ("s", [])):
        await store.create_run(RunSpec(id=run_id, project="nulls"))
        await store.record_many([MetricRecord(run_id, "loss", v, 0) for v in values])
    query = RunQuery(project="nulls", sort="metric", sort_metric="loss", descending=descending)
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_runs(attrs.evolve(query, limit=1, cursor=cursor))
        seen.extend(run.id for run in page.runs)
        if (cursor := page.next_cursor) is None:
            break
    assert seen == (["r", "p", "s", "q"] if descending else ["p", "r", "q", "s"])
