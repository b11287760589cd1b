"""open_store picks the adapter from the URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible.metrics import (
    JsonlMetricsStore,
    MemoryMetricsStore,
    SqliteMetricsStore,
    open_store,
)

pytestmark = pytest.mark.anyio


async def test_urls(tmp_path: Path) -> None:
    assert isinstance(await open_store("memory://"), MemoryMetricsStore)
    cases = [
        (f"jsonl://{tmp_path}/a.jsonl", JsonlMetricsStore, tmp_path / "a.jsonl"),
        (str(tmp_path / "b.jsonl"), JsonlMetricsStore, tmp_path / "b.jsonl"),
        (f"sqlite://{tmp_path}/c.db", SqliteMetricsStore, tmp_path / "c.db"),
    ]
    for url, kind, path in cases:
        async with await open_store(url) as store:
            assert isinstance(store, kind)
            await store.record("run", "loss", 1.0)
        assert path.exists()
    with pytest.raises(ValueError, match="unsupported metrics store URL"):
        await open_store("redis://localhost")
    with pytest.raises(ValueError, match="names no file"):
        await open_store("sqlite://")


async def test_postgres_url(postgres_dsn: str) -> None:
    async with await open_store(postgres_dsn, schema="open_store_test") as store:
        await store.record("run", "loss", 1.0, step=1)
        assert [r.step for r in await store.read("run")] == [1]
        await store.delete_run("run")
