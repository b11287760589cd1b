"""Fixtures for the metrics tests: a throwaway PostgreSQL server and store factories.

PostgreSQL tests use `CRUCIBLE_TEST_POSTGRES_DSN` when set, else start a private cluster.
When no server can be had they skip with the reason, unless `CRUCIBLE_REQUIRE_POSTGRES=1`
(set by .ci/run), where they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from crucible.metrics import (
    JsonlMetricsStore,
    MemoryMetricsStore,
    MetricsStore,
    RemoteMetricsStore,
    SqliteMetricsStore,
)
from crucible.service import ServiceConfig
from crucible.testing import PostgresUnavailable, service_in_thread, throwaway_cluster

ADAPTERS = ["memory", "jsonl", "sqlite", "postgres", "remote"]


def _no_postgres(reason: str) -> None:
    if os.environ.get("CRUCIBLE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required here (CRUCIBLE_REQUIRE_POSTGRES=1): {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        _no_postgres("asyncpg is not installed (pip install 'crucible[postgres]')")
    dsn = os.environ.get("CRUCIBLE_TEST_POSTGRES_DSN")
    if dsn:
        yield dsn
        return
    cluster = throwaway_cluster(fast_unsafe=True)
    try:
        dsn = cluster.__enter__()
    except PostgresUnavailable as error:
        _no_postgres(str(error))
    try:
        yield dsn
    finally:
        cluster.__exit__(None, None, None)


def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    async def drop() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await connection.close()

    asyncio.run(drop())


class StoreFactory:
    """Opens stores of one adapter kind on the same backing storage (to test reopening)."""

    def __init__(self, kind: str, tmp_path: Path, dsn: str | None) -> None:
        self.kind = kind
        self.persistent = kind != "memory"
        self._tmp_path = tmp_path
        self._dsn = dsn
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        self._memory = MemoryMetricsStore()
        self.opened: list[MetricsStore] = []
        self._service: Any = None
        self.url = ""
        if kind == "remote":  # the service over a memory store, in this process
            self._service = service_in_thread(self._memory, config=ServiceConfig(rate_limit=0))
            self.url = self._service.__enter__()

    def open_sync(self, **options: Any) -> MetricsStore:
        store: MetricsStore
        if self.kind == "memory":
            store = MemoryMetricsStore() if self.opened else self._memory
        elif self.kind == "jsonl":
            store = JsonlMetricsStore(self._tmp_path / "metrics.jsonl", **options)
        elif self.kind == "sqlite":
            store = SqliteMetricsStore(self._tmp_path / "metrics.db", **options)
        elif self.kind == "remote":
            buffer = self._tmp_path / f"buffer-{len(self.opened)}"
            store = RemoteMetricsStore(self.url, buffer_dir=buffer, **options)
        else:
            from crucible.metrics import PostgresMetricsStore

            assert self._dsn is not None
            store = PostgresMetricsStore(self._dsn, schema=self.schema, **options)
        self.opened.append(store)
        return store

    async def open(self, **options: Any) -> MetricsStore:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(lambda: self.open_sync(**options))

    def cleanup(self) -> None:
        if self.kind == "postgres" and self._dsn is not None:
            drop_schema(self._dsn, self.schema)
        if self._service is not None:
            self._service.__exit__(None, None, None)


@pytest.fixture(params=ADAPTERS)
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    dsn = request.getfixturevalue("postgres_dsn") if request.param == "postgres" else None
    made = StoreFactory(request.param, tmp_path, dsn)
    yield made
    made.cleanup()


@pytest.fixture
async def store(factory: StoreFactory) -> AsyncIterator[MetricsStore]:
    opened = await factory.open()
    try:
        yield opened
    finally:
        await opened.close()
