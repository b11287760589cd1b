"""Bounded loopback load: 20 concurrent clients send batches of 500 for 10 s; afterwards the
server holds exactly what it acknowledged (nothing lost, nothing doubled)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from crucible.testing import ServerProcess

pytestmark = pytest.mark.anyio

CLIENTS = 20
BATCH = 500
SECONDS = float(os.environ.get("CRUCIBLE_LOAD_SECONDS", "10"))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path, extra_args=("--rate-limit", "0"))
    process.start()
    yield process
    process.stop()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # one backend: the load is the point
async def test_twenty_clients_for_ten_seconds_store_exactly_what_was_acknowledged(
    server: ServerProcess,
) -> None:
    acknowledged = [0] * CLIENTS
    headers = {"Authorization": f"Bearer {server.token}"}

    async def client(index: int, deadline: float) -> None:
        run_id = f"load-{index}"
        step = 0
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as http:
            while anyio.current_time() < deadline:
                metrics = [
                    {"metric": "loss", "value": 1.0 / (step + i + 1), "step": step + i}
                    for i in range(BATCH)
                ]
                response = await http.post(
                    "/api/v1/metrics/batch", json={"run_id": run_id, "metrics": metrics}
                )
                assert response.status_code == 200, response.text
                acknowledged[index] += BATCH
                step += BATCH

    deadline = anyio.current_time() + SECONDS
    async with anyio.create_task_group() as group:
        for index in range(CLIENTS):
            group.start_soon(client, index, deadline)

    async with httpx.AsyncClient(base_url=server.url, headers=headers) as http:
        for index, sent in enumerate(acknowledged):
            assert sent > 0
            response = await http.get(f"/api/v1/runs/load-{index}/metrics/loss/stats")
            stats = response.json()
            assert stats["count"] == sent and stats["first_step"] == 0
            assert stats["last_step"] == sent - 1  # steps unique and contiguous: no doubles
        text = (await http.get("/metrics")).text
        assert f"crucible_metrics_ingested_total {sum(acknowledged)}" in text
