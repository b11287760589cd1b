"""Metric stores against their raw baselines, on 1M records.

    python -m bench.stores [--records N] [--naive-records N] [--batch N] [--postgres DSN]

Rows, each baseline measured in this same process and run:
- JSONL ingest: the naive writer (open, append one line, close, per record; no fsync) vs
  `JsonlMetricsStore(durable=True)` taking `record_many` batches, each batch fsynced before
  the call returns; plus the floor (msgspec encode + one write + fsync per batch, by hand).
- JSONL read: `read(run, metric=...)` on the 1M-record file vs `json.loads` per line + filter.
- SQLite: `SqliteMetricsStore` vs raw `sqlite3` executemany, one transaction per batch,
  both WAL + synchronous=FULL, both converting records to rows.
- PostgreSQL: `PostgresMetricsStore` vs raw asyncpg `copy_records_to_table`, one
  transaction per batch, each run after a CHECKPOINT. Uses --postgres /
  CRUCIBLE_POSTGRES_DSN, else starts a throwaway cluster (fsync on) when PostgreSQL is
  installed, else the rows are skipped.
The read and database rows alternate baseline and ours `--repeat` times and keep each best.

Records are built before timing (building 1M MetricRecords is timed on its own row): the
stores are measured on what they do with records, not on how the caller makes them.
Targets (issue 5): JSONL ingest >= 1M records/s durable per batch and >= 20x naive; SQLite
and PostgreSQL within 1.2x of their raw drivers; read + filter of 1M <= 0.7 s.
Timing never fails anything: it is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec

from crucible.metrics import JsonlMetricsStore, MetricRecord, SqliteMetricsStore

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
METRICS = ["loss", "accuracy", "learning_rate", "grad_norm"]


def make_records(n: int) -> list[MetricRecord]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return [
        MetricRecord(
            "run-1", METRICS[i % 4], 1.0 / (i + 1), i // 4, start + timedelta(microseconds=i)
        )
        for i in range(n)
    ]


def batches(records: list[MetricRecord], size: int) -> Iterator[list[MetricRecord]]:
    for i in range(0, len(records), size):
        yield records[i : i + size]


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Table:
    def __init__(self) -> None:
        print("| case | baseline | baseline rec/s | crucible rec/s | crucible/baseline | note |")
        print("| --- | --- | --- | --- | --- | --- |")

    def row(self, case: str, baseline: str, base_rate: float, ours_rate: float, note: str) -> None:
        ratio = ours_rate / base_rate if base_rate else float("nan")
        print(
            f"| {case} | {baseline} | {base_rate:,.0f} | {ours_rate:,.0f} | {ratio:.2f}x | {note} |"
        )


# -- JSONL --------------------------------------------------------------------------------------


def naive_jsonl(path: Path, records: list[MetricRecord]) -> None:
    """What the original design did: open, append one line, close, for every record."""
    for r in records:
        line = json.dumps(
            {
                "run_id": r.run_id,
                "metric": r.metric,
                "value": r.value,
                "step": r.step,
                "timestamp": r.timestamp.isoformat(),
                "metadata": r.metadata,
            }
        )
        with path.open("a") as file:
            file.write(line + "\n")


def raw_jsonl(path: Path, records: list[MetricRecord], batch: int) -> None:
    """The floor: encode each batch, one write, one fsync."""
    encoder = msgspec.json.Encoder()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in batches(records, batch):
            os.write(fd, encoder.encode_lines(chunk))
            os.fsync(fd)
    finally:
        os.close(fd)


async def ours_jsonl(path: Path, records: list[MetricRecord], batch: int) -> float:
    async with JsonlMetricsStore(path, durable=True) as store:
        start = time.perf_counter()
        for chunk in batches(records, batch):
            await store.record_many(chunk)  # returns once this batch is fsynced
        return time.perf_counter() - start


def json_loads_filter(path: Path, run: str, metric: str) -> list[dict[str, Any]]:
    with path.open() as file:
        rows = [json.loads(line) for line in file]
    return [row for row in rows if row["run_id"] == run and row["metric"] == metric]


async def ours_read(path: Path, run: str, metric: str) -> tuple[float, int]:
    async with JsonlMetricsStore(path) as store:
        gc.collect()
        start = time.perf_counter()
        found = await store.read(run, metric=metric)
        return time.perf_counter() - start, len(found)


# -- SQLite -------------------------------------------------------------------------------------

SQLITE_SCHEMA = [
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    """CREATE TABLE metrics (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, metric TEXT NOT NULL,
       value REAL NOT NULL, step INTEGER, ts INTEGER NOT NULL, metadata TEXT)""",
    "CREATE INDEX metrics_run_metric_step ON metrics (run_id, metric, step)",
    "CREATE INDEX metrics_run_ts ON metrics (run_id, ts)",
]


def raw_sqlite(path: Path, records: list[MetricRecord], batch: int) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    for statement in SQLITE_SCHEMA:
        connection.execute(statement)
    encode = msgspec.json.encode
    for chunk in batches(records, batch):
        rows = [
            (
                r.run_id,
                r.metric,
                r.value,
                r.step,
                (r.timestamp - EPOCH) // MICROSECOND,
                encode(r.metadata).decode() if r.metadata else None,
            )
            for r in chunk
        ]
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO metrics (run_id, metric, value, step, ts, metadata) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        connection.execute("COMMIT")
    connection.close()


async def ours_sqlite(path: Path, records: list[MetricRecord], batch: int) -> float:
    store = await anyio.to_thread.run_sync(SqliteMetricsStore, path)
    async with store:
        start = time.perf_counter()
        for chunk in batches(records, batch):
            await store.record_many(chunk)
        await store.flush()
        return time.perf_counter() - start


# -- PostgreSQL ---------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres(dsn: str | None) -> Iterator[str | None]:
    if dsn:
        yield dsn
        return
    try:
        from crucible.testing import PostgresUnavailable, throwaway_cluster
    except ImportError:
        yield None
        return
    try:
        cluster = throwaway_cluster()
        started = cluster.__enter__()
    except PostgresUnavailable as error:
        print(f"\n(PostgreSQL rows skipped: {error})")
        yield None
        return
    try:
        yield started
    finally:
        cluster.__exit__(None, None, None)


async def checkpoint(connection: Any) -> None:
    """Start each timed run with no WAL debt from the previous one (needs superuser)."""
    with contextlib.suppress(Exception):
        await connection.execute("CHECKPOINT")


async def raw_postgres(dsn: str, records: list[MetricRecord], batch: int) -> float:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("DROP SCHEMA IF EXISTS bench_raw CASCADE")
        await connection.execute("CREATE SCHEMA bench_raw")
        await connection.execute(
            """CREATE TABLE bench_raw.metrics (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, run_id text NOT NULL,
                metric text NOT NULL, value double precision NOT NULL, step bigint,
                ts timestamptz NOT NULL, metadata jsonb)"""
        )
        await connection.execute(
            "CREATE INDEX ON bench_raw.metrics (run_id, metric, step);"
            "CREATE INDEX ON bench_raw.metrics (run_id, ts)"
        )
        encode = msgspec.json.encode
        columns = ["run_id", "metric", "value", "step", "ts", "metadata"]
        await checkpoint(connection)
        gc.collect()
        start = time.perf_counter()
        for chunk in batches(records, batch):
            rows = [
                (
                    r.run_id,
                    r.metric,
                    r.value,
                    r.step,
                    r.timestamp,
                    encode(r.metadata).decode() if r.metadata else None,
                )
                for r in chunk
            ]
            async with connection.transaction():
                await connection.copy_records_to_table(
                    "metrics", schema_name="bench_raw", records=rows, columns=columns
                )
        return time.perf_counter() - start
    finally:
        await connection.close()


async def ours_postgres(dsn: str, records: list[MetricRecord], batch: int) -> float:
    import asyncpg

    from crucible.metrics import PostgresMetricsStore

    connection = await asyncpg.connect(dsn)
    await connection.execute("DROP SCHEMA IF EXISTS bench_ours CASCADE")
    await checkpoint(connection)
    await connection.close()
    store = await anyio.to_thread.run_sync(lambda: PostgresMetricsStore(dsn, schema="bench_ours"))
    async with store:
        gc.collect()
        start = time.perf_counter()
        for chunk in batches(records, batch):
            await store.record_many(chunk)
        await store.flush()
        return time.perf_counter() - start


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--naive-records",
        type=int,
        default=None,
        help="time the naive writer on fewer records, compared by rate (default: all)",
    )
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument(
        "--repeat", type=int, default=2, help="read and database rows: alternate, keep the best"
    )
    parser.add_argument("--postgres", default=os.environ.get("CRUCIBLE_POSTGRES_DSN"))
    args = parser.parse_args()
    n, batch = args.records, args.batch

    print(f"# python -m bench.stores --records {n} --batch {batch}")
    print(f"\n{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}\n")
    build = timed(lambda: make_records(n))
    records = make_records(n)
    print(
        f"Building {n:,} MetricRecords (validated): {build:.2f} s, "
        f"{build / n * 1e9:.0f} ns/record (not part of any row below)\n"
    )
    table = Table()
    with tempfile.TemporaryDirectory(prefix="crucible-bench-") as tmp:
        root = Path(tmp)
        naive_n = n if args.naive_records is None else min(args.naive_records, n)
        naive = timed(lambda: naive_jsonl(root / "naive.jsonl", records[:naive_n]))
        ours = anyio.run(ours_jsonl, root / "ours.jsonl", records, batch)
        table.row(
            "JSONL ingest",
            f"naive open/append/close ({naive_n:,} rec)",
            naive_n / naive,
            n / ours,
            f"ours: fsync per {batch:,}-record batch",
        )
        floor = timed(lambda: raw_jsonl(root / "raw.jsonl", records, batch))
        table.row(
            "JSONL ingest",
            "raw encode+write+fsync per batch",
            n / floor,
            n / ours,
            "the floor: same bytes, same fsyncs",
        )

        loads = read = float("inf")
        for _ in range(args.repeat):
            baseline = partial(json_loads_filter, root / "ours.jsonl", "run-1", "loss")
            loads = min(loads, timed(baseline))
            seconds, found = anyio.run(ours_read, root / "ours.jsonl", "run-1", "loss")
            read = min(read, seconds)
        table.row(
            "JSONL read+filter",
            "json.loads per line",
            n / loads,
            n / read,
            f"{n:,} lines, {found:,} match: ours {read:.3f} s, json.loads {loads:.3f} s",
        )

        raw = ours = float("inf")
        for attempt in range(args.repeat):  # alternate, keep the best: less order bias
            raw = min(raw, timed(partial(raw_sqlite, root / f"raw{attempt}.db", records, batch)))
            ours = min(ours, anyio.run(ours_sqlite, root / f"ours{attempt}.db", records, batch))
        table.row(
            "SQLite ingest",
            "sqlite3 executemany",
            n / raw,
            n / ours,
            f"WAL, synchronous=FULL, commit per {batch:,}",
        )

    with postgres(args.postgres) as dsn:
        if dsn is not None:
            raw = ours = float("inf")
            for _ in range(args.repeat):
                raw = min(raw, asyncio.run(raw_postgres(dsn, records, batch)))
                ours = min(ours, anyio.run(ours_postgres, dsn, records, batch))
            table.row(
                "PostgreSQL ingest",
                "asyncpg copy_records_to_table",
                n / raw,
                n / ours,
                f"binary COPY, commit per {batch:,}",
            )


if __name__ == "__main__":
    main()
