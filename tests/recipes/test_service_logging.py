"""A run that logs to the metric service (``service_url``): the run record, its metrics
(exactly metrics.jsonl, once), checkpoints and model version arrive, whether the service was
up all along, came up mid-run, or the run was resumed after a crash; finished runs import
from their directories, and importing again changes nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from crucible.recipes import (
    ConfigError,
    ProgressReporter,
    ServiceLink,
    execute_run,
    load_config,
    prepare_run_dir,
)
from crucible.recipes.sl_basic._pipeline import drain
from crucible.recipes.sl_basic._stages import Evaluate
from crucible.run import main
from crucible.serve import main as serve_main
from crucible.service import ServiceConfig, TokenStore, create_app, server_config
from crucible.telemetry import attach, detach
from crucible.testing import free_port

from .run_kit import read_jsonl, tiny_overrides


class _Server(uvicorn.Server):
    """Sets `up` once it listens: tests wait on it, not on a clock."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = threading.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.up.set()


@contextmanager
def serving(db: Path, port: int, tokens: TokenStore | None = None) -> Iterator[str]:
    """The service over the SQLite database `db`, on `port` (a run may have been told the
    URL before anything listened there)."""
    app = create_app(f"sqlite:///{db}", tokens=tokens, config=ServiceConfig(rate_limit=0))
    server = _Server(
        server_config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=f"test-serve:{port}", daemon=True)
    thread.start()
    assert server.up.wait(timeout=60), "the service did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _file_points(run_dir: Path) -> list[tuple[str, int, float, datetime]]:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return sorted((r["metric"], r["step"], r["value"], _moment(r["timestamp"])) for r in rows)


def _service_run(url: str, run_id: str, token: str | None = None) -> dict[str, Any]:
    """The run record and every point the service holds for it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, headers=headers) as client:
        run = client.get(f"/api/v1/runs/{run_id}")
        assert run.status_code == 200, run.text
        page = client.get(f"/api/v1/runs/{run_id}/metrics", params={"limit": 10_000}).json()
    points = [(p["metric"], p["step"], p["value"], _moment(p["timestamp"])) for p in page["points"]]
    return {**run.json(), "points": sorted(points)}


def _assert_service_has_the_run(service: dict[str, Any], run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert service["id"] == run_dir.name
    assert service["status"] == "completed"
    assert service["config"] == json.loads((run_dir / "config.json").read_text())
    assert service["summary"]["steps"] == summary["steps"]
    assert service["summary"]["eval_accuracy_last"] == summary["eval_accuracy_last"]
    assert service["points"] == _file_points(run_dir)  # every record, once
    checkpoints = [row["name"] for row in read_jsonl(run_dir / "checkpoints.jsonl")]
    assert sorted(c["name"] for c in service["checkpoints"]) == sorted(checkpoints)
    final = [c for c in service["checkpoints"] if c["final"]]
    assert len(final) == 1 and final[0]["sampler_path"] == summary["sampler_path"]
    versions = service["model_versions"]
    assert [(v["name"], v["version"]) for v in versions] == [("sl_basic", run_dir.name)]
    assert versions[0]["checkpoint"] == summary["sampler_path"]


def test_a_run_logs_its_record_metrics_checkpoints_and_model_to_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = TokenStore(tmp_path / "tokens.db")
    token = tokens.create("trainer")
    monkeypatch.setenv("CRUCIBLE_TOKEN", token)
    run_dir = tmp_path / "run"
    with serving(tmp_path / "service.db", free_port(), tokens) as url:
        monkeypatch.setenv("CRUCIBLE_SERVICE_URL", url)  # no service_url: the environment's
        assert main([*tiny_overrides(tmp_path, run_dir), "--quiet"]) == 0
        service = _service_run(url, run_dir.name, token)
    tokens.close()
    _assert_service_has_the_run(service, run_dir)
    assert service["tags"] == ["sl_basic", "backend:local"] and service["host"]
    for name in ("config.json", "summary.json"):  # the token stays in the environment
        assert token not in (run_dir / name).read_text()
    assert json.loads((run_dir / "config.json").read_text())["service_url"] is None
    assert (run_dir / "service-buffer" / "spool.log").stat().st_size == 0  # all delivered
    assert "metric service" not in capsys.readouterr().err  # nothing left waiting


@pytest.mark.anyio
async def test_a_service_that_comes_up_mid_run_gets_everything_once(tmp_path: Path) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(
        tmp_path, run_dir, service_url=f"http://127.0.0.1:{port}", service_wait_s=60.0
    )
    config = load_config(None, overrides)
    prepare_run_dir(config, run_dir, False)
    came_up: list[datetime] = []
    with ExitStack() as stack:

        def service_comes_up(*_: Any) -> None:
            if not came_up:  # the first checkpoint: steps were recorded with nobody listening
                came_up.append(datetime.now(UTC))
                stack.enter_context(serving(tmp_path / "service.db", port))

        attach("test.service-up", "crucible_train.checkpoint.saved", service_comes_up)
        try:
            outcome = await execute_run(
                config,
                run_dir,
                resume=False,
                reporter=ProgressReporter(mode="quiet"),
                handle_signals=False,
            )
        finally:
            detach("test.service-up")
        assert outcome.status == "completed" and outcome.service_buffered == 0
        service = _service_run(f"http://127.0.0.1:{port}", run_dir.name)
    _assert_service_has_the_run(service, run_dir)
    # What was recorded before anything listened arrived too.
    assert _moment(service["started_at"]) < came_up[0]
    assert any(point[3] < came_up[0] for point in service["points"])


def test_a_service_that_stays_down_leaves_the_run_alone_and_says_what_waits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    url = f"http://127.0.0.1:{port}"
    argv = [*tiny_overrides(tmp_path, run_dir, service_url=url, service_wait_s=0.5), "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"the metric service at {url} has not taken" in err
    assert "python -m crucible.serve import" in err and "--resume" in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    # The import command brings the run in from its directory, the same as live logging.
    db = tmp_path / "service.db"
    assert serve_main(["--store", f"sqlite:///{db}", "import", str(run_dir)]) == 0
    assert capsys.readouterr().out.startswith(f"{run_dir.name}: imported")
    with serving(db, port) as served:
        service = _service_run(served, run_dir.name)
    _assert_service_has_the_run(service, run_dir)


def test_a_resumed_run_keeps_its_id_and_the_steps_it_trains_again_appear_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crash_at_4(self: Evaluate, ctx: Any) -> None:
        if ctx.state.step == 4:
            await drain(ctx)  # step 4 is recorded (and sent), then the run dies
            raise RuntimeError("the GPU caught fire")
        await original(self, ctx)

    original = Evaluate.run
    monkeypatch.setattr(Evaluate, "run", crash_at_4)
    run_dir = tmp_path / "run"
    # Checkpoints at steps 3 and 6: the crash at step 4 leaves step 4 after the last one.
    with serving(tmp_path / "service.db", free_port()) as url:
        argv = [*tiny_overrides(tmp_path, run_dir, save_every=3, service_url=url), "--quiet"]
        assert main(argv) == 1
        crashed = _service_run(url, run_dir.name)
        assert crashed["status"] == "failed" and "GPU caught fire" in crashed["notes"]
        assert ("train/loss", 4) in {(p[0], p[1]) for p in crashed["points"]}
        monkeypatch.setattr(Evaluate, "run", original)
        assert main(["--resume", str(run_dir), "--quiet"]) == 0
        service = _service_run(url, run_dir.name)
        listed = httpx.get(f"{url}/api/v1/runs").json()["runs"]
    assert [run["id"] for run in listed] == [run_dir.name]  # the same run, not a new one
    assert service["notes"] == ""
    _assert_service_has_the_run(service, run_dir)


def test_importing_twice_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main([*tiny_overrides(tmp_path, run_dir), "--quiet"]) == 0
    capsys.readouterr()
    db = f"sqlite:///{tmp_path / 'service.db'}"
    port = free_port()
    seen = []
    for expected in ("imported", "unchanged", "unchanged"):
        assert serve_main(["--store", db, "import", str(run_dir)]) == 0
        assert capsys.readouterr().out.startswith(f"{run_dir.name}: {expected}")
        with serving(tmp_path / "service.db", port) as url:
            seen.append(_service_run(url, run_dir.name))
    assert seen[0] == seen[1] == seen[2]  # heartbeat and all
    _assert_service_has_the_run(seen[0], run_dir)
    missing = tmp_path / "nothing"
    missing.mkdir()
    assert serve_main(["--store", db, "import", str(missing)]) == 1
    assert "no config.json there" in capsys.readouterr().err


def test_a_bad_service_url_is_bad_input_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="CRUCIBLE_TOKEN"):
        load_config(None, ["service_url=http://alice:secret@metrics:8600"])
    with pytest.raises(ConfigError, match="http"):
        load_config(None, ["service_url=metrics:8600"])
    monkeypatch.setenv("CRUCIBLE_SERVICE_URL", "ftp://metrics")
    assert main([*tiny_overrides(tmp_path, run_dir), "--quiet"]) == 2
    assert "CRUCIBLE_SERVICE_URL must be an http:// or https:// URL" in capsys.readouterr().err
    assert not run_dir.exists()


class _HeartbeatRecorder:
    """Stands in for the link's RemoteRuns: counts heartbeats, says when there are enough."""

    def __init__(self, wanted: int) -> None:
        self.beats: list[str] = []
        self.enough = anyio.Event()
        self._wanted = wanted

    def heartbeat(self, run_id: str) -> None:
        self.beats.append(run_id)
        if len(self.beats) >= self._wanted:
            self.enough.set()


@pytest.mark.anyio
async def test_a_running_link_heartbeats_until_it_is_cancelled(tmp_path: Path) -> None:
    link = ServiceLink(
        f"http://127.0.0.1:{free_port()}", tmp_path, "r1", wait_s=0, heartbeat_every=0.001
    )
    recorder = _HeartbeatRecorder(wanted=3)
    link._runs = recorder  # type: ignore[assignment]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(link.keep_alive)
            await recorder.enough.wait()
            tasks.cancel_scope.cancel()
    assert recorder.beats[:3] == ["r1", "r1", "r1"]
    assert await link.finish("completed", {}, None) == 0  # never started: nothing to end
