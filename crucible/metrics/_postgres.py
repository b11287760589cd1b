"""PostgresMetricsStore: asyncpg with binary COPY, TimescaleDB when the server has it.

asyncpg runs on asyncio only, while Crucible code runs on asyncio or trio; so the store owns
a private asyncio event loop in a thread (an anyio blocking portal) where its connection
pool lives. Callers on either backend reach it through a worker thread, and the group-commit
writer thread calls into it directly.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.from_thread
import msgspec

from ._buffered import BufferedStore
from ._errors import MetricNotFound
from ._postgres_runs import PG, PostgresRuns
from ._query import Query, check_max_points
from ._record import MetricRecord, MetricSummary
from ._runbook import summarize_batch
from ._runs_sql import (
    latest_of,
    schema,
    summaries_sql,
    summary_values,
    touch_run_sql,
    touch_values,
    upsert_summary_sql,
)
from ._sql import COLUMNS, ORDER_DESC, history_sql, read_sql, record_row
from ._writer import Chunk

try:
    import asyncpg
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "PostgresMetricsStore needs asyncpg: pip install 'crucible[postgres]'"
    ) from error

__all__ = ["PostgresMetricsStore"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_encode = msgspec.json.encode
_decode_metadata = msgspec.json.Decoder(dict[str, Any]).decode
_COPY_COLUMNS = [c.strip() for c in COLUMNS.split(",")]


def _placeholder(n: int) -> str:
    return f"${n}"


def _identity(moment: datetime) -> datetime:
    return moment


def _plain_schema(s: str) -> list[str]:
    """Migration 1 without TimescaleDB: an ordinary table with the same indexes."""
    return [
        f"""CREATE TABLE {s}.metrics (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- arrival order
            run_id text NOT NULL,
            metric text NOT NULL,
            value double precision NOT NULL,
            step bigint,
            ts timestamptz NOT NULL,
            metadata jsonb                                      -- NULL when empty
        )""",
        *_common_schema(s),
    ]


def _timescale_schema(s: str) -> list[str]:
    """Migration 1 with TimescaleDB: a hypertable on ts (its key must include ts)."""
    return [
        "CREATE EXTENSION IF NOT EXISTS timescaledb",
        f"""CREATE TABLE {s}.metrics (
            id bigint GENERATED ALWAYS AS IDENTITY,
            run_id text NOT NULL,
            metric text NOT NULL,
            value double precision NOT NULL,
            step bigint,
            ts timestamptz NOT NULL,
            metadata jsonb,
            PRIMARY KEY (id, ts)
        )""",
        f"SELECT create_hypertable('{s}.metrics', 'ts')",
        *_common_schema(s),
    ]


def _common_schema(s: str) -> list[str]:
    return [
        f"CREATE INDEX metrics_run_metric_step ON {s}.metrics (run_id, metric, step)",
        f"CREATE INDEX metrics_run_ts ON {s}.metrics (run_id, ts)",
        f"""CREATE TABLE {s}.metric_batches (
            key text PRIMARY KEY,
            stored_at timestamptz NOT NULL DEFAULT now()
        )""",
    ]


def _timescale_outside_transaction(s: str, retention: timedelta | None) -> list[str]:
    """Continuous aggregates cannot be created inside a transaction block."""
    statements = [
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {s}.metrics_hourly
            WITH (timescaledb.continuous) AS
            SELECT run_id, metric, time_bucket(INTERVAL '1 hour', ts) AS bucket,
                   count(*) AS count, avg(value) AS mean, min(value) AS min,
                   max(value) AS max, last(value, ts) AS last
            FROM {s}.metrics GROUP BY run_id, metric, bucket WITH NO DATA""",
        f"""SELECT add_continuous_aggregate_policy('{s}.metrics_hourly',
                start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
                schedule_interval => INTERVAL '1 hour', if_not_exists => true)""",
    ]
    if retention is not None:
        seconds = int(retention.total_seconds())
        statements.append(
            f"SELECT add_retention_policy('{s}.metrics', drop_after => "
            f"INTERVAL '{seconds} seconds', if_not_exists => true)"
        )
    return statements


def _initial_schema(s: str, layout: str) -> list[str]:
    return _timescale_schema(s) if layout == "timescaledb" else _plain_schema(s)


# Versioned migrations, applied in order past the highest version recorded in
# <schema>.crucible_metrics_migrations; each maps (schema, layout) to its statements.
_MIGRATIONS: list[Callable[[str, str], list[str]]] = [
    _initial_schema,
    lambda s, layout: schema(PG, s),  # runs and run_summaries, filled from stored points
]


def _row(record: MetricRecord) -> tuple[Any, ...]:
    return record_row(record, _identity)


def _record(row: Sequence[Any]) -> MetricRecord:
    run_id, metric, value, step, ts, metadata = row
    return MetricRecord(
        run_id, metric, value, step, ts, _decode_metadata(metadata) if metadata else {}
    )


class _PostgresSink:
    """The writer thread's way in: each batch is one transaction on the store's loop."""

    def __init__(self, store: PostgresMetricsStore) -> None:
        self._store = store

    def write(self, chunks: list[Chunk]) -> None:
        self._store._portal.call(self._store._write, chunks)

    def sync(self) -> None:
        """Nothing to do: a committed transaction is durable (synchronous_commit)."""


class PostgresMetricsStore(PostgresRuns, BufferedStore):
    """Metrics in PostgreSQL: batches go in with binary COPY, one transaction per batch.

    The schema is created on first use by versioned migrations (table
    `<schema>.crucible_metrics_migrations`, guarded by an advisory lock so concurrent
    openers agree). When the server offers the `timescaledb` extension, `metrics` becomes a
    hypertable with an hourly continuous aggregate `metrics_hourly` and a retention policy
    dropping raw rows older than `retention` (None: keep everything); otherwise it is a
    plain table with the same indexes. `history` buckets on the server.

    Opening connects (blocking): in async code prefer `await open_store(dsn)`.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        durable: bool = False,
        flush_interval: float = 0.2,
        max_batch: int = 65536,
        pool_size: int = 4,
        retention: timedelta | None = timedelta(days=90),
    ) -> None:
        if not _IDENTIFIER.fullmatch(schema):
            raise ValueError(f"schema must be a plain SQL identifier, got {schema!r}")
        self.schema = schema
        self.layout = "unknown"
        self._retention = retention
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] = (
            anyio.from_thread.start_blocking_portal("asyncio")
        )
        self._portal = self._portal_cm.__enter__()
        try:
            self._pool: Any = self._portal.call(
                functools.partial(asyncpg.create_pool, dsn, min_size=1, max_size=pool_size)
            )
            self.layout = self._portal.call(self._migrate)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        super().__init__(
            _PostgresSink(self),
            durable=durable,
            flush_interval=flush_interval,
            max_batch=max_batch,
            name=f"crucible-metrics-postgres:{schema}",
        )

    # -- schema ------------------------------------------------------------------------------

    async def _migrate(self) -> str:
        s = self.schema
        async with self._pool.acquire() as con:
            async with con.transaction():
                await con.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('crucible.metrics.' || $1))", s
                )
                await con.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                await con.execute(
                    f"""CREATE TABLE IF NOT EXISTS {s}.crucible_metrics_migrations (
                        version integer PRIMARY KEY,
                        layout text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())"""
                )
                applied = await con.fetchrow(
                    f"SELECT version, layout FROM {s}.crucible_metrics_migrations "
                    "ORDER BY version DESC LIMIT 1"
                )
                if applied is None:
                    # Installed files are not enough: the server must also preload the
                    # library, or CREATE EXTENSION fails (unless it is already created).
                    timescale = await con.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions "
                        "WHERE name = 'timescaledb') AND (EXISTS (SELECT 1 FROM pg_extension "
                        "WHERE extname = 'timescaledb') OR current_setting("
                        "'shared_preload_libraries') LIKE '%timescaledb%')"
                    )
                    version, layout = 0, "timescaledb" if timescale else "plain"
                else:
                    version, layout = int(applied["version"]), str(applied["layout"])
                for number, migration in enumerate(_MIGRATIONS[version:], start=version + 1):
                    for statement in migration(s, layout):
                        await con.execute(statement)
                    await con.execute(
                        f"INSERT INTO {s}.crucible_metrics_migrations (version, layout) "
                        "VALUES ($1, $2)",
                        number,
                        layout,
                    )
            # Idempotent, and outside any transaction as TimescaleDB requires: re-run at each
            # open so an opener that died between the two steps is repaired by the next one.
            if layout == "timescaledb":
                for statement in _timescale_outside_transaction(s, self._retention):
                    await con.execute(statement)
            return layout

    # -- writing (called from the writer thread through _PostgresSink) ------------------------

    async def _write(self, chunks: list[Chunk]) -> None:
        s = self.schema
        keys = [c.idempotency_key for c in chunks if c.idempotency_key is not None]
        async with self._pool.acquire() as con, con.transaction():
            fresh: set[str] = set()
            if keys:
                inserted = await con.fetch(
                    f"INSERT INTO {s}.metric_batches (key) SELECT DISTINCT unnest($1::text[]) "
                    "ON CONFLICT DO NOTHING RETURNING key",
                    keys,
                )
                fresh = {row[0] for row in inserted}
            rows: list[tuple[Any, ...]] = []
            stored: list[MetricRecord] = []
            for chunk in chunks:
                key = chunk.idempotency_key
                if key is not None:
                    if key not in fresh:
                        continue  # stored before
                    fresh.discard(key)  # the same key twice in one group: keep the first
                rows.extend(map(_row, chunk.records))
                stored.extend(chunk.records)
            if rows:
                await con.copy_records_to_table(
                    "metrics", schema_name=s, columns=_COPY_COLUMNS, records=rows
                )
                # The runs' summaries and heartbeats, in the same transaction as the points;
                # sorted so concurrent writers lock the rows in one order (no deadlock).
                stats = dict(sorted(summarize_batch(stored).items()))
                touched = sorted(touch_values(stats, datetime.now(UTC), PG))
                await con.executemany(touch_run_sql(PG, s), touched)
                await con.executemany(upsert_summary_sql(PG, s), summary_values(stats, PG))

    # -- queries -----------------------------------------------------------------------------

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await self._query(functools.partial(self._portal.call, fn, *args))

    async def _fetch(self, sql: str, args: Sequence[Any]) -> list[MetricRecord]:
        async with self._pool.acquire() as con:
            rows = await con.fetch(sql, *args)
        return [_record(row) for row in rows]

    def _sql(self, sql: str) -> str:
        return sql.replace("FROM metrics", f"FROM {self.schema}.metrics")

    async def _select(self, query: Query) -> list[MetricRecord]:
        sql, args = read_sql(query, _placeholder, _identity)
        records: list[MetricRecord] = await self._call(self._fetch, self._sql(sql), args)
        return records

    async def latest(self, run_id: str) -> dict[str, MetricRecord]:
        # From the run's summary rows (its last points): no scan of the points.
        async def latest() -> dict[str, MetricRecord]:
            async with self._pool.acquire() as con:
                rows = await con.fetch(summaries_sql(PG, 1, self.schema), [run_id])
            return latest_of(rows, PG)

        result: dict[str, MetricRecord] = await self._call(latest)
        return result

    async def summary(self, run_id: str, metric: str) -> MetricSummary:
        s = self.schema

        async def summary() -> Any:
            async with self._pool.acquire() as con:
                return await con.fetchrow(
                    f"""SELECT count(*), avg(value), stddev_samp(value), min(value),
                               max(value), min(step), max(step),
                               (SELECT value FROM {s}.metrics WHERE run_id = $1
                                AND metric = $2 ORDER BY {ORDER_DESC} LIMIT 1)
                        FROM {s}.metrics WHERE run_id = $1 AND metric = $2""",
                    run_id,
                    metric,
                )

        row = await self._call(summary)
        count, mean, std, low, high, first_step, last_step, last = row
        if count == 0:
            raise MetricNotFound(run_id, metric)
        return MetricSummary(
            run_id=run_id,
            metric=metric,
            count=count,
            mean=float(mean),
            std=float(std) if std is not None else 0.0,
            min=float(low),
            max=float(high),
            last=float(last),
            first_step=first_step,
            last_step=last_step,
        )

    async def history(self, run_id: str, metric: str, max_points: int) -> list[MetricRecord]:
        check_max_points(max_points)
        sql, _ = history_sql(_placeholder, max_points)
        records: list[MetricRecord] = await self._call(
            self._fetch, self._sql(sql), [run_id, metric, max_points]
        )
        return records

    async def runs(self) -> list[str]:
        async def runs() -> list[str]:
            async with self._pool.acquire() as con:
                rows = await con.fetch(f"SELECT DISTINCT run_id FROM {self.schema}.run_summaries")
            return sorted(row[0] for row in rows)  # Python order, not the server's collation

        result: list[str] = await self._call(runs)
        return result

    async def delete_run(self, run_id: str) -> int:
        async def delete() -> int:
            s = self.schema
            async with self._pool.acquire() as con, con.transaction():
                status = await con.execute(f"DELETE FROM {s}.metrics WHERE run_id = $1", run_id)
                await con.execute(f"DELETE FROM {s}.run_summaries WHERE run_id = $1", run_id)
                await con.execute(f"DELETE FROM {s}.runs WHERE id = $1", run_id)
            return int(status.split()[-1])

        result: int = await self._call(delete)
        return result

    def _release(self) -> None:
        try:
            self._portal.call(self._pool.close)
        finally:
            self._portal_cm.__exit__(None, None, None)
