"""The live WebSocket stream, slow subscribers, and the system metrics sampler."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

import crucible
from crucible.actors import open_runtime
from crucible.metrics import MemoryMetricsStore
from crucible.service import (
    SLOW_CONSUMER_CLOSE_CODE,
    SampleSystem,
    SystemSampler,
    sample_system,
)
from crucible.service._stream import Broadcaster

from .service_kit import points, service


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_websocket_pushes_points_as_they_are_ingested(tmp_path: Path, backend: str) -> None:
    with service(tmp_path, backend) as svc:
        protocols = ["crucible", f"bearer.{svc.token}"]
        with (
            svc.client.websocket_connect("/ws/metrics/run-1", subprotocols=protocols) as one,
            svc.client.websocket_connect(
                "/ws/metrics/run-1", headers=svc.auth(svc.read_only_token)
            ) as two,
        ):
            assert one.accepted_subprotocol == "crucible"
            svc.post("run-2", points(1))  # another run: not pushed here
            svc.post("run-1", points(3), **{"Idempotency-Key": "k1"})
            svc.post("run-1", points(3), **{"Idempotency-Key": "k1"})  # a retry: not pushed
            svc.post("run-1", points(2, start=3))
            for ws in (one, two):
                first = json.loads(ws.receive_text())
                second = json.loads(ws.receive_text())
                assert first["run_id"] == "run-1"
                steps = [p["step"] for p in first["points"] + second["points"]]
                assert steps == [0, 1, 2, 3, 4]


@pytest.mark.anyio
async def test_a_slow_subscriber_is_dropped_without_holding_back_others() -> None:
    broadcaster = Broadcaster(queue_size=4)
    slow = broadcaster.subscribe("r")
    fast = broadcaster.subscribe("r")
    received: list[bytes] = []
    for i in range(10):
        broadcaster.publish("r", str(i).encode())  # never waits, whoever lags
        received.append(await fast.receive.receive())
    assert received == [str(i).encode() for i in range(10)]
    assert slow.dropped and not fast.dropped and broadcaster.dropped_total == 1
    assert [await slow.receive.receive() for _ in range(4)] == [b"0", b"1", b"2", b"3"]
    with pytest.raises(anyio.EndOfStream):
        await slow.receive.receive()  # then its stream ends: the socket closes with 4008
    assert SLOW_CONSUMER_CLOSE_CODE == 4008
    assert broadcaster.subscriber_count == 1


def test_sample_system_reports_cpu_and_memory() -> None:
    sample = sample_system()
    assert {"cpu_percent", "memory_percent", "memory_used_bytes", "process_rss_bytes"} <= set(
        sample
    )
    assert 0.0 <= sample["memory_percent"] <= 100.0 and sample["process_rss_bytes"] > 0


@pytest.mark.anyio
async def test_system_sampler_records_into_a_store() -> None:
    store = MemoryMetricsStore()
    async with open_runtime() as runtime:
        ref = await runtime.spawn(SystemSampler(store, "run-1", interval=3600.0))
        assert await ref.call(SampleSystem()) == 1
        assert await ref.call(SampleSystem()) == 2
    latest = await store.latest("run-1")
    assert "system/cpu_percent" in latest and "system/memory_percent" in latest
    assert len(await store.read("run-1", metric="system/cpu_percent")) == 2


def test_system_sampler_runs_from_sync_code_with_embedded() -> None:
    store = MemoryMetricsStore()
    with crucible.embedded() as runtime:
        ref = runtime.spawn(SystemSampler(store, "run-1", interval=3600.0))
        assert ref.call(SampleSystem()) == 1
        latest = runtime.run(store.latest, "run-1")
    assert "system/memory_used_bytes" in latest
