"""Idempotency keys are scoped per token and run, and bound to the batch they came with: a
reused key never makes the service drop a different batch while answering 200."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crucible.metrics import MemoryMetricsStore, MetricRecord, RemoteMetricsStore
from crucible.service import ServiceConfig, TokenStore
from crucible.testing import service_in_thread

from .service_kit import Service, points, service


def steps(svc: Service, run_id: str) -> list[int]:
    response: Any = svc.get(f"/api/v1/runs/{run_id}/metrics", limit=10_000)
    return [] if response.status_code == 404 else [p["step"] for p in response.json()["points"]]


def test_a_key_reused_for_a_different_batch_is_409_and_the_first_batch_stays(
    tmp_path: Path,
) -> None:
    with service(tmp_path) as svc:
        assert svc.post("run", points(3), **{"Idempotency-Key": "k"}).status_code == 200
        reused = svc.post("run", points(3, start=100), **{"Idempotency-Key": "k"})
        assert reused.status_code == 409
        assert reused.json()["error"] == "idempotency_key_reused"
        assert "'k'" in reused.json()["detail"]
        assert svc.post("run", points(3), **{"Idempotency-Key": "k"}).status_code == 200  # retry
        assert steps(svc, "run") == [0, 1, 2]
        assert "crucible_metrics_ingested_total 3" in svc.get("/metrics").text


def test_one_key_in_two_runs_or_from_two_tokens_stores_every_batch(tmp_path: Path) -> None:
    with service(tmp_path) as svc:
        tokens = TokenStore(tmp_path / "tokens.db")
        other = tokens.create("second-writer")
        tokens.close()
        key = {"Idempotency-Key": "step-0"}
        assert svc.post("run-a", points(2), **key).status_code == 200
        assert svc.post("run-b", points(2, start=10), **key).status_code == 200
        assert steps(svc, "run-a") == [0, 1] and steps(svc, "run-b") == [10, 11]
        # Another token, same run and key, another batch: its own scope, so stored.
        response = svc.client.post(
            "/api/v1/metrics/batch",
            json={"run_id": "run-a", "metrics": points(1, start=5)},
            headers={**svc.auth(other), **key},
        )
        assert response.status_code == 200
        assert steps(svc, "run-a") == [0, 1, 5]


def test_a_system_batch_key_is_bound_to_its_batch_too(tmp_path: Path) -> None:
    with service(tmp_path) as svc:
        path = "/api/v1/runs/run/system/batch"
        headers = {**svc.auth(), "Idempotency-Key": "sys"}
        first = {"metrics": [{"metric": "cpu", "value": 1.0}]}
        second = {"metrics": [{"metric": "cpu", "value": 2.0}]}
        assert svc.client.post(path, json=first, headers=headers).status_code == 200
        assert svc.client.post(path, json=second, headers=headers).status_code == 409


@pytest.mark.anyio
async def test_two_remote_stores_with_one_key_for_different_runs_both_store(
    tmp_path: Path,
) -> None:
    memory = MemoryMetricsStore()
    with service_in_thread(memory, config=ServiceConfig(rate_limit=0)) as url:
        for n, run in enumerate(("first", "second")):
            async with RemoteMetricsStore(url, buffer_dir=tmp_path / f"buffer-{n}") as remote:
                batch = [MetricRecord(run, "loss", float(i), i) for i in range(3)]
                await remote.record_many(batch, idempotency_key="epoch-1")
                await remote.flush()
                assert remote.rejected == 0
        async with RemoteMetricsStore(url, buffer_dir=tmp_path / "reader") as reader:
            for run in ("first", "second"):
                assert [r.step for r in await reader.read(run)] == [0, 1, 2]
