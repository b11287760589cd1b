import json
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from crucible import telemetry
from crucible.actors import open_runtime
from crucible.telemetry import Telemetry

pytestmark = pytest.mark.anyio


class Clock:
    """A settable µs clock, so timestamps in tests are exact."""

    def __init__(self) -> None:
        self.now = 1_700_000_000_000_000

    def __call__(self) -> int:
        self.now += 1_000
        return self.now


@pytest.fixture
async def hub() -> AsyncIterator[Telemetry]:
    async with Telemetry(clock=Clock(), rng=random.Random(0)) as hub:
        yield hub


def names(hub: Telemetry, experiment_id: str) -> list[str]:
    return [e.event_name for e in hub.events(experiment_id)]


async def test_start_experiment(hub: Telemetry) -> None:
    exp = await hub.start_experiment(
        "lr-sweep", hypothesis="lower lr helps", condition="treatment", tags=["a", "b"]
    )
    assert re.fullmatch(r"[0-9a-f]{16}", exp.id)
    assert (exp.name, exp.hypothesis, exp.condition) == ("lr-sweep", "lower lr helps", "treatment")
    assert (exp.status, exp.tags, exp.pause_count) == ("running", ("a", "b"), 0)
    assert hub.get(exp.id) == exp
    other = await hub.start_experiment("second")
    assert other.id != exp.id
    assert other.condition == "default"
    assert [e.id for e in hub.list()] == [exp.id, other.id]


@pytest.mark.parametrize("name", ["", "   ", None])
async def test_a_name_is_required(hub: Telemetry, name: object) -> None:
    with pytest.raises(ValueError, match="non-empty name"):
        await hub.start_experiment(name)  # type: ignore[arg-type]
    assert hub.list() == []


async def test_tags_must_not_be_a_bare_string(hub: Telemetry) -> None:
    with pytest.raises(TypeError, match="tags"):
        await hub.start_experiment("x", tags="abc")


async def test_only_addressed_events_are_recorded(hub: Telemetry) -> None:
    a = await hub.start_experiment("a")
    b = await hub.start_experiment("b")
    telemetry.execute("x.stop", {"duration": 1_000_000}, {"experiment_id": a.id})
    telemetry.execute("x.unaddressed", {}, {})
    with b.active():
        telemetry.execute("y.in_b", {}, {})
        telemetry.execute("y.to_a", {}, {"experiment_id": a.id})  # explicit id wins
        with a.active():
            telemetry.execute("y.nested", {}, {})
        telemetry.execute("y.after_nested", {}, {})
    telemetry.execute("y.outside", {}, {})
    assert names(hub, a.id) == ["x.stop", "y.to_a", "y.nested"]
    assert names(hub, b.id) == ["y.in_b", "y.after_nested"]
    (first,) = hub.query(a.id, {"event_name": "x.stop"})
    assert first.latency_ms == 1.0
    assert (first.experiment_id, first.experiment_name) == (a.id, "a")


async def test_active_does_not_leak_into_other_tasks(hub: Telemetry) -> None:
    exp = await hub.start_experiment("a")
    inside = anyio.Event()
    release = anyio.Event()

    async def emitter_outside() -> None:
        await inside.wait()
        telemetry.execute("from.other.task")
        release.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(emitter_outside)
        with exp.active():
            telemetry.execute("from.this.task")
            inside.set()
            await release.wait()
    assert names(hub, exp.id) == ["from.this.task"]


async def test_events_for_unknown_experiments_are_ignored(hub: Telemetry) -> None:
    telemetry.execute("x", {}, {"experiment_id": "0" * 16})
    telemetry.execute("x", {}, {"experiment_id": 42})
    assert hub.list() == []


async def test_pause_and_resume(hub: Telemetry) -> None:
    exp = await hub.start_experiment("a")
    with exp.active():
        telemetry.execute("before")
        paused = hub.pause(exp.id)
        assert (paused.status, paused.pause_count) == ("paused", 1)
        assert hub.is_paused(exp.id)
        telemetry.execute("while.paused")
        with pytest.raises(telemetry.AlreadyPaused):
            hub.pause(exp.id)
        resumed = hub.resume(exp.id)
        assert (resumed.status, resumed.pause_count) == ("running", 1)
        assert not hub.is_paused(exp.id)
        with pytest.raises(telemetry.NotPaused):
            hub.resume(exp.id)
        telemetry.execute("after")
        hub.pause(exp.id)
        hub.resume(exp.id)
    assert names(hub, exp.id) == ["before", "after"]
    assert hub.get(exp.id).pause_count == 2


async def test_unknown_ids(hub: Telemetry) -> None:
    assert hub.is_paused("nope") is False
    for call in (hub.get, hub.stop, hub.pause, hub.resume, hub.events):
        with pytest.raises(telemetry.NotFound, match="nope"):
            call("nope")
    with pytest.raises(telemetry.NotFound):
        await hub.cleanup("nope")


async def test_stop_keeps_data_and_stops_recording(hub: Telemetry) -> None:
    exp = await hub.start_experiment("a")
    with exp.active():
        telemetry.execute("before")
        stopped = hub.stop(exp.id)
        assert stopped.status == "stopped"
        assert stopped.stopped_at is not None
        telemetry.execute("after")
    assert names(hub, exp.id) == ["before"]
    assert hub.stop(exp.id) == stopped  # idempotent
    with pytest.raises(telemetry.NotRunning):
        hub.pause(exp.id)
    with pytest.raises(telemetry.NotPaused):
        hub.resume(exp.id)


async def test_cleanup(hub: Telemetry) -> None:
    dropped = await hub.start_experiment("dropped")
    kept = await hub.start_experiment("kept")
    for exp in (dropped, kept):
        telemetry.execute("e", {}, {"experiment_id": exp.id})
    await hub.cleanup(dropped.id)
    await hub.cleanup(kept.id, keep_data=True)
    with pytest.raises(telemetry.NotFound):
        hub.get(dropped.id)
    assert hub.get(kept.id).status == "stopped"
    assert names(hub, kept.id) == ["e"]
    assert [e.id for e in hub.list()] == [kept.id]


async def test_sampling(hub: Telemetry) -> None:
    never = await hub.start_experiment("never", metadata={"sampling_rate": 0.0})
    half = await hub.start_experiment("half", metadata={"sampling_rate": 0.5})
    for _ in range(400):
        telemetry.execute("e", {}, {"experiment_id": never.id})
        telemetry.execute("e", {}, {"experiment_id": half.id})
    # A per-event rate overrides the experiment's.
    telemetry.execute("forced", {}, {"experiment_id": never.id, "sampling_rate": 1.0})
    assert names(hub, never.id) == ["forced"]
    assert 150 < len(hub.events(half.id)) < 250


async def test_archive(hub: Telemetry, tmp_path: Path) -> None:
    exp = await hub.start_experiment("a", tags=["t"], metadata={"lr": 0.1})
    telemetry.execute("e.one", {"loss": 1.0}, {"experiment_id": exp.id, "obj": object()})
    telemetry.execute("e.two", {}, {"experiment_id": exp.id})
    path = await hub.archive(exp.id, tmp_path / "a.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["type"] == "experiment"
    assert (lines[0]["id"], lines[0]["tags"], lines[0]["metadata"]) == (exp.id, ["t"], {"lr": 0.1})
    assert [line["event_name"] for line in lines[1:]] == ["e.one", "e.two"]
    assert "obj" not in lines[1]["metadata"]
    assert [e.event_name for e in telemetry.read_jsonl(path)] == ["e.one", "e.two"]


async def test_export(hub: Telemetry, tmp_path: Path) -> None:
    exp = await hub.start_experiment("a")
    with pytest.raises(telemetry.NoData):
        await hub.export(exp.id, "csv", tmp_path / "x.csv")
    telemetry.execute("e", {"x": 1}, {"experiment_id": exp.id, "note": "a,b"})
    with pytest.raises(telemetry.UnsupportedFormat, match="parquet"):
        await hub.export(exp.id, "parquet", tmp_path / "x.parquet")
    with pytest.raises(telemetry.NotFound):
        await hub.export("nope", "csv", tmp_path / "x.csv")
    csv_path = await hub.export(exp.id, "csv", tmp_path / "x.csv")
    assert csv_path.read_bytes() == telemetry.to_csv(hub.events(exp.id)).encode()
    jsonl_path = await hub.export(exp.id, "jsonl", tmp_path / "x.jsonl")
    assert telemetry.read_jsonl(jsonl_path) == hub.events(exp.id)


async def test_analysis_through_the_hub(hub: Telemetry) -> None:
    base = await hub.start_experiment("base")
    treat = await hub.start_experiment("treat")
    for exp, duration in ((base, 10_000_000), (treat, 5_000_000)):
        for _ in range(3):
            telemetry.execute("llm.stop", {"duration": duration}, {"experiment_id": exp.id})
    assert hub.calculate_metrics(base.id).latency.mean == 10.0
    comparison = hub.compare_experiments([base.id, treat.id])
    assert comparison.baseline == base.id
    assert comparison.treatments[0].latency_improvement_pct == pytest.approx(50.0)
    with pytest.raises(ValueError, match="at least 2"):
        hub.compare_experiments([base.id])
    with pytest.raises(ValueError, match="once"):
        hub.compare_experiments([base.id, base.id])
    with pytest.raises(telemetry.NotFound):
        hub.compare_experiments([base.id, "nope"])


async def test_window_queries_through_the_hub(hub: Telemetry) -> None:
    exp = await hub.start_experiment("a")
    for i in range(5):
        telemetry.execute("e", {"duration": i * 1_000_000}, {"experiment_id": exp.id, "i": i})
    newest = hub.query_window(exp.id, telemetry.LastN(2))
    assert [e.metadata["i"] for e in newest] == [3, 4]
    windows = hub.windowed_metrics(exp.id, 2_000, 2_000)  # the clock ticks 1 ms per event
    assert sum(w.count for w in windows) == 5


async def test_live_metrics_in_process(hub: Telemetry) -> None:
    exp = await hub.start_experiment("a")
    for i in range(4):
        telemetry.execute(
            "llm.stop",
            {"duration": (i + 1) * 1_000_000},
            {"experiment_id": exp.id, "cost": 0.5, "response": "ok"},
        )
    snap = await hub.live_metrics(exp.id)
    assert snap.latency.count == 4
    assert snap.latency.mean == 2.5
    assert snap.cost.total == 2.0
    assert snap.reliability.success_rate == 1.0
    assert snap.event_counts == {"llm.stop": 4}
    await hub.reset_live_metrics(exp.id)
    assert (await hub.live_metrics(exp.id)).event_counts == {}
    assert len(hub.events(exp.id)) == 4  # reset leaves recorded events alone


async def test_each_experiment_feeds_its_own_actor() -> None:
    async with open_runtime() as rt, Telemetry(runtime=rt) as hub:
        a = await hub.start_experiment("a")
        b = await hub.start_experiment("b")
        assert rt.whereis(f"telemetry.metrics.{a.id}") is not None
        with a.active():
            telemetry.execute("llm.stop", {"duration": 2_000_000}, {"error": "timeout"})
        with b.active():
            telemetry.execute("llm.stop", {"duration": 4_000_000}, {"response": "ok"})
            telemetry.execute("llm.start")
        snap_a, snap_b = await hub.live_metrics(a.id), await hub.live_metrics(b.id)
        assert (snap_a.latency.mean, snap_a.reliability.failed) == (2.0, 1)
        assert (snap_b.latency.mean, snap_b.reliability.successful) == (4.0, 1)
        assert snap_b.event_counts == {"llm.stop": 1, "llm.start": 1}
        await hub.cleanup(a.id)
        assert rt.whereis(f"telemetry.metrics.{a.id}") is None
        assert hub.handler_id in {h.handler_id for h in telemetry.list_handlers()}
    assert hub.handler_id not in {h.handler_id for h in telemetry.list_handlers()}


async def test_emitting_from_a_worker_thread_reaches_the_actor() -> None:
    async with open_runtime() as rt, Telemetry(runtime=rt) as hub:
        exp = await hub.start_experiment("a")

        def trainer_loop() -> None:
            for step in range(20):
                telemetry.execute(
                    "crucible_train.batch.stop",
                    {"loss": 1.0 / (step + 1), "duration": 1_000_000},
                    {"experiment_id": exp.id, "batch": step},
                )

        await anyio.to_thread.run_sync(trainer_loop)
        snap = await hub.live_metrics(exp.id)
        assert snap.event_counts == {"crucible_train.batch.stop": 20}
        events = hub.events(exp.id)
        assert [e.batch for e in events] == list(range(20))


async def test_a_dead_metrics_actor_does_not_stop_recording() -> None:
    async with open_runtime() as rt, Telemetry(runtime=rt) as hub:
        exp = await hub.start_experiment("a")
        ref = rt.whereis(f"telemetry.metrics.{exp.id}")
        assert ref is not None
        await ref.stop()
        telemetry.execute("e", {}, {"experiment_id": exp.id})
        telemetry.execute("e", {}, {"experiment_id": exp.id})
        assert len(hub.events(exp.id)) == 2
        assert hub.handler_id in {h.handler_id for h in telemetry.list_handlers()}


async def test_closing_the_hub_detaches_it() -> None:
    hub = Telemetry()
    exp = await hub.start_experiment("a")
    await hub.aclose()
    telemetry.execute("e", {}, {"experiment_id": exp.id})
    assert hub.events(exp.id) == []
    assert hub.handler_id not in {h.handler_id for h in telemetry.list_handlers()}
