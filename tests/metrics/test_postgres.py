"""PostgreSQL specifics: versioned migrations, the plain layout's indexes, COPY batches."""

from __future__ import annotations

import asyncio
import uuid

import anyio.to_thread
import pytest

from crucible.metrics import MetricRecord

from .conftest import drop_schema

pytestmark = pytest.mark.anyio


def query(dsn: str, sql: str) -> list[tuple[object, ...]]:
    import asyncpg

    async def fetch() -> list[tuple[object, ...]]:
        connection = await asyncpg.connect(dsn)
        try:
            return [tuple(row) for row in await connection.fetch(sql)]
        finally:
            await connection.close()

    return asyncio.run(fetch())


async def test_schema_is_created_once_with_versioned_migrations(postgres_dsn: str) -> None:
    from crucible.metrics import PostgresMetricsStore

    schema = f"t_{uuid.uuid4().hex[:12]}"

    def open_store() -> PostgresMetricsStore:
        return PostgresMetricsStore(postgres_dsn, schema=schema)

    try:
        async with await anyio.to_thread.run_sync(open_store) as first:
            # Debian's PostgreSQL has no TimescaleDB: the plain layout, same indexes.
            assert first.layout == "plain"
            await first.record_many([MetricRecord("run", "m", float(i), i) for i in range(10)])
        async with await anyio.to_thread.run_sync(open_store) as again:
            assert again.layout == "plain"
            assert len(await again.read("run")) == 10
        migrations, indexes = await anyio.to_thread.run_sync(
            lambda: (
                query(
                    postgres_dsn,
                    f"SELECT version, layout FROM {schema}.crucible_metrics_migrations",
                ),
                query(
                    postgres_dsn,
                    f"SELECT indexname FROM pg_indexes WHERE schemaname = '{schema}' "
                    "AND tablename = 'metrics' ORDER BY indexname",
                ),
            )
        )
        assert migrations == [(1, "plain"), (2, "plain")]  # 2: runs and run_summaries
        assert [name for (name,) in indexes] == [
            "metrics_pkey",
            "metrics_run_metric_step",
            "metrics_run_ts",
        ]
    finally:
        await anyio.to_thread.run_sync(drop_schema, postgres_dsn, schema)


async def test_schema_names_must_be_plain_identifiers(postgres_dsn: str) -> None:
    from crucible.metrics import PostgresMetricsStore

    with pytest.raises(ValueError, match="plain SQL identifier"):
        PostgresMetricsStore(postgres_dsn, schema="x; DROP TABLE y")
