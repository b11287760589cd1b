"""What a killed process left in the offline buffer is delivered by the next store's
`flush()` and `close()`, not only by a store that happens to stay open long enough."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from crucible.metrics import MemoryMetricsStore, MetricRecord, RemoteMetricsStore
from crucible.service import ServiceConfig
from crucible.testing import free_port, service_in_thread

RECORDS = 500
BATCH = 10  # 50 requests left behind: far more than one in flight when flush() returns


def leave_records_behind(buffer: Path) -> None:
    """A store whose server never answered: its records stay in `buffer`, as after a kill."""
    dead = f"http://127.0.0.1:{free_port()}"
    store = RemoteMetricsStore(dead, buffer_dir=buffer, batch_size=BATCH, close_timeout=0)
    store.sync.record_many([MetricRecord("left", "loss", float(i), i) for i in range(RECORDS)])
    store.sync.flush()  # durable in the buffer (the delivery attempt failed)
    assert store.buffered == RECORDS // BATCH
    store.sync.close()


@pytest.fixture
def url() -> Iterator[str]:
    with service_in_thread(MemoryMetricsStore(), config=ServiceConfig(rate_limit=0)) as url:
        yield url


def stored(url: str) -> int:
    response = httpx.get(f"{url}/api/v1/runs/left/metrics", params={"limit": 1})
    return 0 if response.status_code == 404 else int(response.json()["total"])


def test_flush_of_a_new_store_delivers_what_an_earlier_one_left(url: str, tmp_path: Path) -> None:
    leave_records_behind(tmp_path / "buffer")
    store = RemoteMetricsStore(url, buffer_dir=tmp_path / "buffer", batch_size=BATCH)
    try:
        store.sync.flush()
        assert stored(url) == RECORDS
        assert store.buffered == 0
    finally:
        store.sync.close()


@pytest.mark.anyio
async def test_async_flush_and_reads_wait_for_the_leftovers(url: str, tmp_path: Path) -> None:
    leave_records_behind(tmp_path / "buffer")
    async with RemoteMetricsStore(url, buffer_dir=tmp_path / "buffer") as store:
        assert len(await store.read("left")) == RECORDS  # a read waits for them too
    leave_records_behind(tmp_path / "buffer")  # the same run again: 500 more points
    async with RemoteMetricsStore(url, buffer_dir=tmp_path / "buffer") as store:
        await store.flush()
        assert stored(url) == 2 * RECORDS


def test_close_of_a_new_store_delivers_what_an_earlier_one_left(url: str, tmp_path: Path) -> None:
    leave_records_behind(tmp_path / "buffer")
    RemoteMetricsStore(url, buffer_dir=tmp_path / "buffer", batch_size=BATCH).sync.close()
    assert stored(url) == RECORDS
    reopened = RemoteMetricsStore(url, buffer_dir=tmp_path / "buffer")
    try:
        assert reopened.buffered == 0  # nothing left to send twice
    finally:
        reopened.sync.close()
