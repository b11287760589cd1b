"""Supervisors: strategies, restart types, intensity and escalation, backoff, ordered shutdown,
dynamic children and names."""

from __future__ import annotations

import anyio
import pytest

from crucible.actors import (
    Actor,
    ActorCrashed,
    ActorInitFailed,
    Backoff,
    ChildAlreadyExists,
    ChildNotFound,
    ChildRunning,
    ChildSpec,
    ExitReason,
    NamedRef,
    NameTaken,
    RestartIntensityExceeded,
    Strategy,
    Supervisor,
    SupervisorRef,
    handler,
    open_runtime,
)

from .actor_kit import Add, Counter, Crash, EventWatcher, Get, Logged, StopNormally, factory

pytestmark = pytest.mark.anyio


def _specs(log: list[str], ids: str = "abc", **kwargs: object) -> list[ChildSpec]:
    return [ChildSpec(i, factory(Logged, i, log), name=i, **kwargs) for i in ids]  # type: ignore[arg-type]


async def _crash(rt, name: str) -> None:  # type: ignore[no-untyped-def]
    ref = rt.whereis(name)
    with pytest.raises(ActorCrashed):
        await ref.call(Crash())
    await ref.wait()


async def test_crash_restarts_a_fresh_incarnation_reachable_by_name() -> None:
    async with open_runtime() as rt:
        watch = EventWatcher(rt)
        await rt.supervise([ChildSpec("counter", Counter, name="counter")], backoff=Backoff.none())
        old = rt.whereis("counter")
        assert old is not None
        await old.cast(Add(5))
        assert await old.call(Get()) == 5
        await _crash(rt, "counter")
        await watch.wait_for("restarted", 1)
        new = rt.whereis("counter")
        assert new is not None and new is not old and new.alive
        assert await new.call(Get()) == 0  # fresh state from init


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("one_for_one", ["stop:b", "start:b"]),
        ("one_for_all", ["stop:b", "stop:c", "stop:a", "start:a", "start:b", "start:c"]),
        ("rest_for_one", ["stop:b", "stop:c", "start:b", "start:c"]),
    ],
)
async def test_each_strategy_restarts_exactly_its_set_in_order(
    strategy: Strategy, expected: list[str]
) -> None:
    log: list[str] = []
    async with open_runtime() as rt:
        watch = EventWatcher(rt)
        await rt.supervise(_specs(log), strategy=strategy, backoff=Backoff.none())
        assert log == ["start:a", "start:b", "start:c"]
        before = {i: rt.whereis(i) for i in "abc"}
        log.clear()
        await _crash(rt, "b")
        restarted = await watch.wait_for("restarted", len([e for e in expected if "start" in e]))
        # terminate runs for a crashed child too ("stop:b" first), then siblings in reverse
        assert log == expected
        assert [e.actor for e in restarted] == [
            f"Logged({e[6:]!r})" for e in expected if "start" in e
        ]
        for i in "abc":
            changed = rt.whereis(i) is not before[i]
            assert changed == (f"start:{i}" in expected)


@pytest.mark.parametrize(
    ("restart", "exit_kind", "comes_back"),
    [
        ("permanent", "normal", True),
        ("permanent", "crash", True),
        ("transient", "normal", False),
        ("transient", "crash", True),
        ("temporary", "normal", False),
        ("temporary", "crash", False),
    ],
)
async def test_restart_types_on_normal_and_abnormal_exit(
    restart: str, exit_kind: str, comes_back: bool
) -> None:
    async with open_runtime() as rt:
        spec = ChildSpec("w", Counter, restart=restart, name="w")  # type: ignore[arg-type]
        sup = await rt.supervise([spec], backoff=Backoff.none())
        ref = rt.whereis("w")
        assert ref is not None
        if exit_kind == "crash":
            with pytest.raises(ActorCrashed):
                await ref.call(Crash())
        else:
            await ref.call(StopNormally())
        await ref.wait()
        children = await sup.which_children()  # queued after the exit notice
        if comes_back:
            assert [(c.id, c.status, c.restarts) for c in children] == [("w", "running", 1)]
            assert rt.whereis("w") is not None
        elif restart == "temporary":
            assert children == []  # a temporary child's spec is dropped when it exits
        else:
            assert [(c.id, c.status, c.ref) for c in children] == [("w", "stopped", None)]
        assert (rt.whereis("w") is not None) == comes_back


async def test_intensity_exhaustion_stops_children_and_escalates() -> None:
    log: list[str] = []
    async with open_runtime() as rt:
        watch = EventWatcher(rt)
        sup = await rt.supervise(
            _specs(log, "ab"), max_restarts=2, max_seconds=60, backoff=Backoff.none()
        )
        for n in range(2):
            await _crash(rt, "a")
            await watch.wait_for("restarted", n + 1)
        log.clear()
        await _crash(rt, "a")  # the third restart within the window is one too many
        reason = await sup.wait()
        assert reason.kind == "crashed"
        assert isinstance(reason.error, RestartIntensityExceeded)
        assert "more than 2 restarts within 60" in str(reason.error)
        assert log == ["stop:a", "stop:b"]  # a's own terminate, then the remaining sibling
        assert rt.whereis("a") is None and rt.whereis("b") is None
        assert len(watch.of("escalated")) == 1


async def test_escalation_goes_through_nested_supervisors() -> None:
    log: list[str] = []
    async with open_runtime() as rt:
        watch = EventWatcher(rt)

        def inner() -> Supervisor:
            return Supervisor(_specs(log, "x"), max_restarts=0, backoff=Backoff.none())

        outer = await rt.supervise(
            [ChildSpec("inner", inner, shutdown=None, name="inner"), *_specs(log, "y")],
            strategy="one_for_one",
            max_restarts=1,
            max_seconds=60,
            backoff=Backoff.none(),
        )
        first_inner = rt.whereis("inner")
        await _crash(rt, "x")  # inner allows 0 restarts: it escalates, outer restarts it
        await watch.wait_for("restarted", 1)
        assert rt.whereis("inner") is not first_inner
        assert rt.whereis("x") is not None and rt.whereis("y") is not None
        await _crash(rt, "x")  # again: outer's own intensity (1) is now exceeded
        reason = await outer.wait()
        assert isinstance(reason.error, RestartIntensityExceeded)
        assert isinstance(reason.error.__cause__, RestartIntensityExceeded)
        assert rt.whereis("y") is None


async def test_backoff_schedule_is_exact_under_a_seed() -> None:
    backoff = Backoff(initial=0.001, maximum=0.02, multiplier=3.0, jitter=0.5, seed=42)
    async with open_runtime() as rt:
        watch = EventWatcher(rt)
        await rt.supervise(
            [ChildSpec("c", Counter, name="c")], max_restarts=10, max_seconds=600, backoff=backoff
        )
        for n in range(4):
            await _crash(rt, "c")
            await watch.wait_for("restarted", n + 1)
        delays = [e.delay for e in watch.of("restarted")]
        assert delays == backoff.schedule(4)
        assert delays != Backoff(0.001, 0.02, 3.0, 0.5, seed=43).schedule(4)


def test_backoff_without_jitter_grows_geometrically_to_the_cap() -> None:
    assert Backoff(0.1, 1.0, 2.0, jitter=0).schedule(6) == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": -1}, {"multiplier": 0.5}, {"jitter": 2}, {"initial": 2, "maximum": 1}],
)
def test_backoff_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Backoff"):
        Backoff(**kwargs)  # type: ignore[arg-type]


async def test_ordered_shutdown_waits_for_a_child_that_ignores_cancellation() -> None:
    log: list[str] = []
    gate = anyio.Event()
    in_terminate = anyio.Event()
    async with open_runtime() as rt:
        sup = await rt.supervise(
            [
                ChildSpec("a", factory(Logged, "a", log)),
                ChildSpec("b", lambda: _Stubborn(log, gate, in_terminate), shutdown=0.01),
                ChildSpec("c", factory(Logged, "c", log)),
            ]
        )
        log.clear()
        reasons: list[ExitReason] = []
        async with anyio.create_task_group() as tg:

            async def stop() -> None:
                reasons.append(await sup.stop())

            tg.start_soon(stop)
            await in_terminate.wait()
            # b is past its 0.01 s shutdown and cancelled, but shields its cleanup: a must
            # not be stopped before b has really finished.
            await anyio.wait_all_tasks_blocked()
            assert log == ["stop:c", "terminate:b"]
            gate.set()
        assert log == ["stop:c", "terminate:b", "terminated:b", "stop:a"]
        assert reasons[0].kind == "shutdown"


class _Stubborn(Actor[None]):
    def __init__(self, log: list[str], gate: anyio.Event, entered: anyio.Event) -> None:
        self.log, self.gate, self.entered = log, gate, entered

    async def terminate(self, reason: ExitReason, state: None) -> None:
        self.log.append("terminate:b")
        self.entered.set()
        with anyio.CancelScope(shield=True):
            await self.gate.wait()
        self.log.append("terminated:b")

    @handler
    def get(self, msg: Get) -> int:
        return 0


async def test_dynamic_children() -> None:
    log: list[str] = []
    async with open_runtime() as rt:
        sup = await rt.supervise([], backoff=Backoff.none())
        ref = await sup.start_child(ChildSpec("d", factory(Logged, "d", log), name="d"))
        assert rt.whereis("d") is ref
        with pytest.raises(ChildAlreadyExists):
            await sup.start_child(ChildSpec("d", Counter))
        counts = await sup.count_children()
        assert (counts.specs, counts.active, counts.workers, counts.supervisors) == (1, 1, 1, 0)
        with pytest.raises(ChildRunning):
            await sup.restart_child("d")
        await sup.terminate_child("d")
        assert not ref.alive and rt.whereis("d") is None
        assert [(c.id, c.status) for c in await sup.which_children()] == [("d", "stopped")]
        again = await sup.restart_child("d")
        assert again.alive and rt.whereis("d") is again
        with pytest.raises(ChildRunning):
            await sup.delete_child("d")
        await sup.terminate_child("d")
        await sup.delete_child("d")
        assert await sup.which_children() == []
        with pytest.raises(ChildNotFound, match="no child 'zz'"):
            await sup.terminate_child("zz")
        with pytest.raises(ActorInitFailed):
            await sup.start_child(ChildSpec("bad", _FailsInit))
        assert await sup.which_children() == []
        assert log == ["start:d", "stop:d", "start:d", "stop:d"]


class _FailsInit(Actor[None]):
    async def init(self) -> None:
        raise OSError("disk missing")


async def test_supervisor_counts_nested_supervisors() -> None:
    async with open_runtime() as rt:
        sup = await rt.supervise(
            [ChildSpec("w", Counter), ChildSpec("s", lambda: Supervisor([]), shutdown=None)]
        )
        counts = await sup.count_children()
        assert (counts.specs, counts.workers, counts.supervisors) == (2, 1, 1)
        assert isinstance(sup, SupervisorRef)


async def test_a_failed_restart_counts_toward_intensity() -> None:
    attempts: list[int] = []

    def start() -> Actor[object]:
        attempts.append(1)
        return Counter() if len(attempts) == 1 else _FailsInit()  # type: ignore[return-value]

    async with open_runtime() as rt:
        sup = await rt.supervise(
            [ChildSpec("c", start, name="c")], max_restarts=3, backoff=Backoff.none()
        )
        await _crash(rt, "c")
        reason = await sup.wait()
        assert isinstance(reason.error, RestartIntensityExceeded)
        assert len(attempts) == 1 + 3  # the first start, then three failed restarts


async def test_names_are_unique_and_released_on_exit() -> None:
    async with open_runtime() as rt:
        ref = await rt.spawn(Counter(), name="n")
        with pytest.raises(NameTaken, match="'n' is already registered"):
            await rt.spawn(Counter(), name="n")
        other = await rt.spawn(Counter())
        with pytest.raises(NameTaken):
            rt.register("n", other)
        await ref.stop()
        assert rt.whereis("n") is None
        rt.register("n", other)
        assert rt.whereis("n") is other
        rt.unregister("n")
        assert rt.whereis("n") is None


def test_child_spec_validation() -> None:
    with pytest.raises(ValueError, match="restart must be one of"):
        ChildSpec("x", Counter, restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shutdown must be >= 0"):
        ChildSpec("x", Counter, shutdown=-1)
    with pytest.raises(ValueError, match="strategy must be one of"):
        Supervisor([], strategy="all_for_none")  # type: ignore[arg-type]
    with pytest.raises(ChildAlreadyExists):
        Supervisor([ChildSpec("x", Counter), ChildSpec("x", Counter)])


async def test_lookup_waits_for_the_restarted_child_and_named_refs_follow_it() -> None:
    async with open_runtime() as rt:
        await rt.supervise([ChildSpec("c", Counter, name="c")], backoff=Backoff(0.05, 0.05))
        named = NamedRef(rt, "c")
        await named.cast(Add(3))
        assert await named.call(Get()) == 3
        await _crash(rt, "c")
        assert rt.whereis("c") is None  # waiting out its 50 ms backoff
        fresh = await rt.lookup("c", timeout=5)
        assert await fresh.call(Get()) == 0
        assert await named.call(Get()) == 0
        with pytest.raises(LookupError, match="'nobody'"):
            await rt.lookup("nobody", timeout=0.01)


async def test_a_failing_linked_task_crashes_its_actor() -> None:
    async with open_runtime() as rt:
        ref = await rt.spawn(_WithTask())
        reason = await ref.wait()
        assert reason.kind == "crashed"
        assert str(reason.error) == "background work failed"


class _WithTask(Actor[None]):
    async def init(self) -> None:
        self.start_soon(self._work)

    async def _work(self) -> None:
        raise OSError("background work failed")

    @handler
    def get(self, msg: Get) -> int:
        return 0
