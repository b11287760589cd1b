"""SqliteMetricsStore: WAL mode, batched executemany from the writer thread."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from ._buffered import BufferedStore
from ._query import Query, check_max_points
from ._record import MetricRecord
from ._sql import COLUMNS, history_sql, latest_sql, read_sql, record_row
from ._writer import Chunk

__all__ = ["SqliteMetricsStore"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_encode = msgspec.json.encode
_decode_metadata = msgspec.json.Decoder(dict[str, Any]).decode

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
            for chunk in chunks:
                if chunk.idempotency_key is not None:
                    inserted = connection.execute(
                        "INSERT OR IGNORE INTO metric_batches (key) VALUES (?)",
                        (chunk.idempotency_key,),
                    ).rowcount
                    if not inserted:
                        continue  # stored before: by us, another store, or a past run
                rows.extend(map(_row, chunk.records))
            connection.executemany(
                f"INSERT INTO metrics ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows
            )
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

    async def latest(self, run_id: str) -> dict[str, MetricRecord]:
        rows = await self._query(self._fetch, latest_sql(lambda n: "?"), [run_id])
        return {r.metric: r for r in sorted(rows, key=lambda r: r.metric)}

    async def history(self, run_id: str, metric: str, max_points: int) -> list[MetricRecord]:
        check_max_points(max_points)
        sql, _ = history_sql(lambda n: "?", max_points)
        return await self._query(self._fetch, sql, [run_id, metric, max_points])

    async def runs(self) -> list[str]:
        def runs() -> list[str]:
            with self._reader_lock:
                rows = self._reader.execute("SELECT DISTINCT run_id FROM metrics").fetchall()
            return sorted(run_id for (run_id,) in rows)

        return await self._query(runs)

    async def delete_run(self, run_id: str) -> int:
        def delete() -> int:
            with self._reader_lock:
                cursor = self._reader.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
                return cursor.rowcount

        return await self._query(delete)

    def _release(self) -> None:
        self._sink.connection.close()
        with self._reader_lock:
            self._reader.close()
