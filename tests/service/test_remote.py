"""RemoteMetricsStore against a real server: the store protocol, the offline buffer,
exactly-once delivery across a server crash (SIGKILL) and a client restart."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from crucible.metrics import (
    InvalidRecord,
    MemoryMetricsStore,
    MetricNotFound,
    MetricRecord,
    RemoteMetricsStore,
    ServiceUnavailable,
    open_store,
)
from crucible.metrics._spool import Spool
from crucible.metrics._writer import Chunk
from crucible.testing import ServerProcess, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("server"))
    process.start()
    yield process
    process.stop()


def server_steps(server: ServerProcess, run_id: str) -> list[int]:
    response = httpx.get(
        f"{server.url}/api/v1/runs/{run_id}/metrics",
        params={"limit": 10_000},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    if response.status_code == 404:
        return []
    return [p["step"] for p in response.json()["points"]]


T0 = datetime(2025, 1, 1, tzinfo=UTC)


async def test_protocol_answers_like_the_memory_store(
    server: ServerProcess, tmp_path: Path, anyio_backend: str
) -> None:
    run = f"proto-{anyio_backend}"
    reference = MemoryMetricsStore()
    remote = await open_store(server.url, token=server.token, buffer_dir=tmp_path / "buf")
    assert isinstance(remote, RemoteMetricsStore)
    async with remote:
        for store in (reference, remote):
            await store.record(run, "loss", 2.5, step=3, timestamp=T0, metadata={"k": "v"})
            await store.record_many(
                [
                    MetricRecord(run, "loss", float(i), i, T0 + timedelta(seconds=i))
                    for i in (9, 1, 5, 7)
                ]
                + [{"run_id": run, "metric": "train/acc", "value": 0.5, "timestamp": T0}],
                idempotency_key=f"{run}-batch",
            )
            await store.record_many(
                [MetricRecord(run, "loss", 100.0, 100, T0)], idempotency_key=f"{run}-batch"
            )
            await store.flush()
        assert await remote.read(run) == await reference.read(run)
        for query in (
            {"metric": "loss", "steps": (2, 7)},
            {"steps": range(5, 6)},
            {"since": T0 + timedelta(seconds=5), "until": T0 + timedelta(seconds=9)},
        ):
            assert await remote.read(run, **query) == await reference.read(run, **query)  # type: ignore[arg-type]
        assert await remote.latest(run) == await reference.latest(run)
        assert await remote.summary(run, "loss") == await reference.summary(run, "loss")
        assert await remote.history(run, "loss", 3) == await reference.history(run, "loss", 3)
        assert run in await remote.runs()
        with pytest.raises(MetricNotFound):
            await remote.summary(run, "nope")
        assert await remote.read("no-such-run") == []
        assert await remote.latest("no/such") == {}
        assert await remote.delete_run(run) == 6
        assert await remote.read(run) == []


async def test_names_the_service_refuses_fail_at_record_time(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with RemoteMetricsStore(server.url, server.token, buffer_dir=tmp_path) as store:
        with pytest.raises(InvalidRecord, match="run_id"):
            await store.record("../x", "loss", 1.0)
        with pytest.raises(InvalidRecord) as caught:
            await store.record_many([MetricRecord("r", "ok", 1.0), MetricRecord("r", "a b", 1.0)])
        assert caught.value.index == 1 and caught.value.field == "metric"
        assert store.buffered == 0


async def test_records_wait_offline_and_arrive_once_when_the_server_starts(
    tmp_path: Path, anyio_backend: str
) -> None:
    server = ServerProcess(tmp_path / "srv", port=free_port())
    (tmp_path / "srv").mkdir(exist_ok=True)
    store = RemoteMetricsStore(server.url, server.token, buffer_dir=tmp_path / "buf", retry_max=0.2)
    try:
        for step in range(50):
            store.sync.record("offline", "loss", float(step), step=step)  # never blocks
        await store.flush()  # the server is away: returns once the records are on disk
        assert not store.online and store.buffered > 0
        with pytest.raises(ServiceUnavailable):
            await store.read("offline")
        server.start()
        await store.flush()
        assert store.online and store.buffered == 0
        assert server_steps(server, "offline") == list(range(50))
    finally:
        await store.close()
        server.stop()


def test_server_killed_mid_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    server.start()
    store = RemoteMetricsStore(
        server.url, server.token, buffer_dir=tmp_path / "buf", batch_size=50, retry_max=0.2
    )
    total = 6000
    halfway = threading.Event()

    def train() -> None:
        for step in range(total):
            store.sync.record("crash", "loss", float(step), step=step)
            if step == total // 3:
                halfway.set()

    trainer = threading.Thread(target=train)
    try:
        trainer.start()
        halfway.wait()
        server.kill()  # mid-stream: requests in flight, some answered, some not
        trainer.join()  # the trainer is never blocked by the dead server
        store.sync.flush()
        assert store.buffered > 0
        server.start()  # same port, same database
        store.sync.flush()
        assert store.buffered == 0
        assert server_steps(server, "crash") == list(range(total))
    finally:
        store.sync.close()
        server.stop()


def test_a_later_process_sends_what_an_earlier_one_buffered(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    first = RemoteMetricsStore(
        server.url, server.token, buffer_dir=tmp_path / "buf", close_timeout=0.5
    )
    first.sync.record_many([MetricRecord("later", "loss", float(i), i) for i in range(30)])
    first.sync.close()  # the server never answered: the records stay in the buffer
    server.start()
    try:
        second = RemoteMetricsStore(server.url, server.token, buffer_dir=tmp_path / "buf")
        second.sync.record("later", "loss", 30.0, step=30)
        second.sync.flush()
        assert server_steps(server, "later") == list(range(31))
        second.sync.close()
    finally:
        server.stop()


def test_a_refused_batch_is_set_aside_and_later_ones_still_go(
    server: ServerProcess, tmp_path: Path
) -> None:
    store = RemoteMetricsStore(server.url, server.read_only_token, buffer_dir=tmp_path / "b1")
    store.sync.record("refused", "loss", 1.0, step=0)
    store.sync.flush()
    assert store.rejected == 1 and store.buffered == 0
    assert "403" in (store.buffer_dir / "rejected.log").read_text()
    store.sync.close()
    good = RemoteMetricsStore(server.url, server.token, buffer_dir=tmp_path / "b2")
    good.sync.record("refused", "loss", 2.0, step=1)
    good.sync.flush()
    good.sync.close()
    assert server_steps(server, "refused") == [1]


def test_spool_recovers_after_a_torn_append(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second = MetricRecord("r", "a", 1.0, 0), MetricRecord("r", "a", 2.0, 1)
    spool.write([Chunk([first], "k1"), Chunk([second], "k2")])
    body = spool.entries[1].body
    spool.ack()
    spool.close()
    with open(tmp_path / "spool.log", "ab") as log:
        log.write(b'k3#0\t{"a"')  # a crash in the middle of an append
    again = Spool(tmp_path)
    assert [(e.key, e.body) for e in again.entries] == [("k2#0", body)]
    again.ack()
    assert (tmp_path / "spool.log").stat().st_size == 0  # emptied once everything is acked
    again.close()


def test_two_stores_on_one_buffer_directory_do_not_share_it(tmp_path: Path) -> None:
    first = Spool(tmp_path / "buf")
    with pytest.raises(BlockingIOError):
        Spool(tmp_path / "buf")
    first.close()
    url = "http://127.0.0.1:9"
    a = RemoteMetricsStore(url, buffer_dir=tmp_path / "x", close_timeout=0.1)
    b = RemoteMetricsStore(url, buffer_dir=tmp_path / "x", close_timeout=0.1)
    assert a.buffer_dir != b.buffer_dir
    a.sync.close()
    b.sync.close()


def posted_batches(server: ServerProcess) -> int:
    text = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.token}"}
    ).text
    prefix = 'crucible_http_requests_total{method="POST",route="post_batch",status="200"} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix) :])
    return 0


def test_single_records_travel_in_batches(server: ServerProcess, tmp_path: Path) -> None:
    store = RemoteMetricsStore(
        server.url, server.token, buffer_dir=tmp_path, batch_size=1000, flush_interval=30.0
    )
    before = posted_batches(server)
    for step in range(2500):
        store.sync.record("trickle", "loss", 1.0, step=step)
    store.sync.flush()
    # A batch goes when 1000 are pending (the trainer may have added a few more by the time
    # the sender takes them: those go as a short batch), the rest at the flush.
    assert 3 <= posted_batches(server) - before <= 6
    assert server_steps(server, "trickle") == list(range(2500))
    store.sync.close()
