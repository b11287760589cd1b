"""SqliteMetricsStore: WAL mode, batched executemany from the writer thread."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from ._buffered import BufferedStore
from ._query import Query, check_max_points
from ._record import MetricRecord
from ._runbook import new_run, record_of, resumed, summarize_batch, updated
from ._runs import (
    DEFAULT_STALE_AFTER,
    RunNotFound,
    RunPage,
    RunQuery,
    RunRecord,
    RunSpec,
    RunUpdate,
    check_query,
    check_spec,
    check_update,
    stale_cutoff,
)
from ._runs_sql import (
    Dialect,
    heartbeat_sql,
    latest_of,
    list_sql,
    page,
    run_row,
    run_values,
    schema,
    select_run_sql,
    stats_of,
    summaries_args,
    summaries_sql,
    summary_values,
    touch_run_sql,
    touch_values,
    upsert_run_sql,
    upsert_summary_sql,
)
from ._sql import COLUMNS, history_sql, read_sql, record_row
from ._writer import Chunk

__all__ = ["SqliteMetricsStore"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_encode = msgspec.json.encode
_decode_metadata = msgspec.json.Decoder(dict[str, Any]).decode
_SQL = Dialect(postgres=False)
_UPSERT_SUMMARY = upsert_summary_sql(_SQL)
_TOUCH_RUN = touch_run_sql(_SQL)

# Versioned migrations, each a list of statements: PRAGMA user_version counts those applied.
_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE metrics (
        id INTEGER PRIMARY KEY,          -- arrival order
        run_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        value REAL NOT NULL,
        step INTEGER,
        ts INTEGER NOT NULL,             -- microseconds since the Unix epoch, UTC
        metadata TEXT                    -- a JSON object, NULL when empty
        )""",
        "CREATE INDEX metrics_run_metric_step ON metrics (run_id, metric, step)",
        "CREATE INDEX metrics_run_ts ON metrics (run_id, ts)",
        "CREATE TABLE metric_batches (key TEXT PRIMARY KEY)",
    ],
    schema(_SQL),  # runs and run_summaries, filled from the points already stored
]


def _to_micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _row(record: MetricRecord) -> tuple[Any, ...]:
    return record_row(record, _to_micros)


def _record(row: tuple[Any, ...]) -> MetricRecord:
    run_id, metric, value, step, micros, metadata = row
    return MetricRecord(
        run_id,
        metric,
        value,
        step,
        _EPOCH + timedelta(microseconds=micros),
        _decode_metadata(metadata) if metadata else {},
    )


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 30000")
    return connection


class _SqliteSink:
    """The writer thread's connection: each batch is one transaction."""

    def __init__(self, path: Path) -> None:
        self.connection = _connect(path)
        self.connection.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is durable once it returns, so flush() needs no extra sync.
        self.connection.execute("PRAGMA synchronous = FULL")
        self._migrate()

    def _migrate(self) -> None:
        connection = self.connection
        connection.execute("BEGIN IMMEDIATE")  # one process migrates at a time
        try:
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            for number, statements in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {number}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def write(self, chunks: list[Chunk]) -> None:
        connection = self.connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            rows: list[tuple[Any, ...]] = []
            stored: list[MetricRecord] = []
            for chunk in chunks:
                if chunk.idempotency_key is not None:
                    inserted = connection.execute(
                        "INSERT OR IGNORE INTO metric_batches (key) VALUES (?)",
                        (chunk.idempotency_key,),
                    ).rowcount
                    if not inserted:
                        continue  # stored before: by us, another store, or a past run
                rows.extend(map(_row, chunk.records))
                stored.extend(chunk.records)
            connection.executemany(
                f"INSERT INTO metrics ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows
            )
            # The runs' summaries and heartbeats, in the same transaction as the points.
            stats = summarize_batch(stored)
            connection.executemany(_TOUCH_RUN, touch_values(stats, datetime.now(UTC), _SQL))
            connection.executemany(_UPSERT_SUMMARY, summary_values(stats, _SQL))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def sync(self) -> None:
        """Nothing to do: with synchronous=FULL every commit is already durable."""


class SqliteMetricsStore(BufferedStore):
    """Metrics in a SQLite database (WAL), safe for many tasks, threads and processes.

    The writer thread inserts each group of buffered records with one executemany in one
    transaction; reads use their own connection, which WAL lets run beside the writer.
    Opening does blocking I/O: in async code prefer `await open_store(url)`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durable: bool = False,
        flush_interval: float = 0.2,
        max_batch: int = 65536,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sink = _SqliteSink(self.path)
        self._reader = _connect(self.path)
        self._reader_lock = threading.Lock()  # one worker thread at a time per connection
        super().__init__(
            self._sink,
            durable=durable,
            flush_interval=flush_interval,
            max_batch=max_batch,
            name=f"crucible-metrics-sqlite:{self.path.name}",
        )

    def _fetch(self, sql: str, args: Iterable[Any]) -> list[MetricRecord]:
        with self._reader_lock:
            rows = self._reader.execute(sql, tuple(args)).fetchall()
        return [_record(row) for row in rows]

    async def _select(self, query: Query) -> list[MetricRecord]:
        sql, args = read_sql(query, lambda n: "?", _to_micros)
        return await self._query(self._fetch, sql, args)

    def _rows(self, sql: str, args: Iterable[Any]) -> list[tuple[Any, ...]]:
        with self._reader_lock:
            return self._reader.execute(sql, tuple(args)).fetchall()

    async def latest(self, run_id: str) -> dict[str, MetricRecord]:
        # From the run's summary rows (its last points): no scan of the points.
        rows = await self._query(self._rows, summaries_sql(_SQL, 1), [run_id])
        return latest_of(rows, _SQL)

    async def history(self, run_id: str, metric: str, max_points: int) -> list[MetricRecord]:
        check_max_points(max_points)
        sql, _ = history_sql(lambda n: "?", max_points)
        return await self._query(self._fetch, sql, [run_id, metric, max_points])

    async def runs(self) -> list[str]:
        def runs() -> list[str]:
            with self._reader_lock:
                rows = self._reader.execute("SELECT DISTINCT run_id FROM run_summaries").fetchall()
            return sorted(run_id for (run_id,) in rows)

        return await self._query(runs)

    async def delete_run(self, run_id: str) -> int:
        def delete() -> int:
            with self._reader_lock, self._transaction() as connection:
                cursor = connection.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
                connection.execute("DELETE FROM run_summaries WHERE run_id = ?", (run_id,))
                connection.execute("DELETE FROM runs WHERE id = ?", (run_id,))
                return cursor.rowcount

        return await self._query(delete)

    # -- runs (RunStore) ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the reader connection (its lock held by the caller)."""
        connection = self._reader
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def _run_record(self, row: dict[str, Any], cutoff: datetime) -> RunRecord:
        rows = self._reader.execute(summaries_sql(_SQL, 1), (row["id"],)).fetchall()
        return record_of(row, stats_of(rows, _SQL).get(row["id"], {}), cutoff)

    def _stored_run(self, run_id: str) -> dict[str, Any] | None:
        found = self._reader.execute(select_run_sql(_SQL), (run_id,)).fetchone()
        return None if found is None else run_row(found, _SQL)

    async def create_run(self, spec: RunSpec) -> tuple[RunRecord, bool]:
        spec = check_spec(spec)

        def create() -> tuple[RunRecord, bool]:
            now = datetime.now(UTC)
            with self._reader_lock, self._transaction() as connection:
                row = self._stored_run(spec.id)
                new = new_run(spec, now) if row is None else resumed(row, spec, now)
                connection.execute(upsert_run_sql(_SQL), run_values(new, _SQL))
                return self._run_record(new, stale_cutoff(now, DEFAULT_STALE_AFTER)), row is None

        return await self._query(create)

    async def update_run(self, run_id: str, update: RunUpdate) -> RunRecord:
        update = check_update(update)

        def change() -> RunRecord:
            now = datetime.now(UTC)
            with self._reader_lock, self._transaction() as connection:
                row = self._stored_run(run_id)
                if row is None:
                    raise RunNotFound(run_id)
                new = updated(row, update, now)
                connection.execute(upsert_run_sql(_SQL), run_values(new, _SQL))
                return self._run_record(new, stale_cutoff(now, DEFAULT_STALE_AFTER))

        return await self._query(change)

    async def heartbeat(self, run_id: str, at: datetime | None = None) -> None:
        moment = _SQL.moment(at or datetime.now(UTC))

        def beat() -> None:
            with self._reader_lock:
                if not self._reader.execute(heartbeat_sql(_SQL), (run_id, moment)).rowcount:
                    raise RunNotFound(run_id)

        await self._query(beat)

    async def get_run(
        self,
        run_id: str,
        *,
        now: datetime | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> RunRecord:
        def get() -> RunRecord:
            with self._reader_lock:
                row = self._stored_run(run_id)
                if row is None:
                    raise RunNotFound(run_id)
                return self._run_record(row, stale_cutoff(now, stale_after))

        return await self._query(get)

    async def list_runs(self, query: RunQuery) -> RunPage:
        query = check_query(query)
        sql, args, _ = list_sql(query, _SQL)

        def listing() -> RunPage:
            with self._reader_lock:
                found = self._reader.execute(sql, args).fetchall()
                chosen = found[: query.limit]
                ids = [row[0] for row in chosen]
                stats = (
                    stats_of(
                        self._reader.execute(
                            summaries_sql(_SQL, len(ids)), summaries_args(ids, _SQL)
                        ).fetchall(),
                        _SQL,
                    )
                    if ids
                    else {}
                )
            return page(found, chosen, stats, query, _SQL)

        return await self._query(listing)

    def _release(self) -> None:
        self._sink.connection.close()
        with self._reader_lock:
            self._reader.close()
