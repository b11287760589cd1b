"""RemoteRuns: a run record made through the remote store's offline buffer arrives, in
order with its points and once, even when the service was down while the run went on."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from crucible.metrics import (
    CheckpointRef,
    InvalidRun,
    MemoryMetricsStore,
    MetricRecord,
    RemoteMetricsStore,
    RemoteRuns,
    RunSpec,
    RunUpdate,
    git_commit,
)
from crucible.service import ServiceConfig
from crucible.testing import free_port, service_in_thread


def test_a_run_made_while_the_service_was_down_arrives_when_it_is_back(tmp_path: Path) -> None:
    buffer = tmp_path / "buffer"
    dead = RemoteMetricsStore(f"http://127.0.0.1:{free_port()}", buffer_dir=buffer, close_timeout=0)
    runs = RemoteRuns(dead)
    sent = runs.create(RunSpec(id="offline", tags=["a"], config={"lr": 0.1}))
    assert sent.host and sent.git_commit == git_commit()  # this checkout is a git repository
    dead.sync.record_many([MetricRecord("offline", "loss", 1.0 / (i + 1), i) for i in range(5)])
    runs.heartbeat("offline")
    runs.update("offline", RunUpdate(checkpoints=[CheckpointRef(name="000004", step=4)]))
    runs.finish("offline", "completed", accuracy=0.75)
    dead.sync.flush()  # durable in the buffer: the service is away
    assert dead.buffered == 5
    dead.sync.close()
    store = MemoryMetricsStore()
    with service_in_thread(store, config=ServiceConfig(rate_limit=0)) as url:
        back = RemoteMetricsStore(url, buffer_dir=buffer)
        back.sync.flush()
        assert back.buffered == 0 and back.rejected == 0
        back.sync.close()
        run = httpx.get(f"{url}/api/v1/runs/offline").json()
    assert run["status"] == "completed" and run["summary"] == {"accuracy": 0.75}
    assert run["tags"] == ["a"] and run["config"] == {"lr": 0.1}
    assert run["checkpoints"][0]["name"] == "000004" and run["git_commit"] == sent.git_commit
    assert run["metrics"]["loss"]["count"] == 5 and run["latest"]["loss"]["step"] == 4


def test_bad_run_fields_raise_at_the_call(tmp_path: Path) -> None:
    store = RemoteMetricsStore(
        f"http://127.0.0.1:{free_port()}", buffer_dir=tmp_path, close_timeout=0
    )
    runs = RemoteRuns(store)
    with pytest.raises(InvalidRun, match="tags"):
        runs.create(RunSpec(id="r", tags=[""]))
    with pytest.raises(InvalidRun, match="id"):
        runs.heartbeat("no/slash")
    assert store.buffered == 0
    store.sync.close()
