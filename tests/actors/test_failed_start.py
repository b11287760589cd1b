"""A supervisor whose child fails to start shuts down the children it already started, as OTP.

OTP, supervisor:start_link/2,3: "If any child process start function fails or returns an error
tuple or an erroneous value, the supervisor first terminates all already started child
processes with reason shutdown and then terminate itself and returns {error, shutdown}."
Terminating a child follows its shutdown spec: it is asked to stop, given its shutdown time,
then killed; children are stopped in reverse start order.
"""

from __future__ import annotations

import anyio
import pytest

from crucible.actors import (
    Actor,
    ActorInitFailed,
    ActorRef,
    Backoff,
    ChildSpec,
    ExitReason,
    Supervisor,
    handler,
    open_runtime,
)

from .actor_kit import Get

pytestmark = pytest.mark.anyio


class _Child(Actor[None]):
    """Logs ``start:<id>``, ``terminate:<id>`` and ``stopped:<id>``; its terminate takes
    ``linger`` seconds (forever with None, until it is cancelled)."""

    def __init__(
        self,
        ident: str,
        log: list[str],
        refs: dict[str, ActorRef[_Child]],
        linger: float | None = 0,
    ) -> None:
        self.ident, self.log, self.refs, self.linger = ident, log, refs, linger

    async def init(self) -> None:
        self.refs[self.ident] = self.ref
        self.log.append(f"start:{self.ident}")

    async def terminate(self, reason: ExitReason, state: None) -> None:
        self.log.append(f"terminate:{self.ident}:{reason.kind}")
        if self.linger is None:
            await anyio.sleep_forever()
        await anyio.sleep(self.linger)
        self.log.append(f"stopped:{self.ident}")

    @handler
    def get(self, msg: Get) -> int:
        return 0


class _FailsInit(Actor[None]):
    async def init(self) -> None:
        raise OSError("disk missing")


def _child(
    ident: str, log: list[str], refs: dict[str, ActorRef[_Child]], **kwargs: object
) -> ChildSpec:
    linger = kwargs.pop("linger", 0)
    return ChildSpec(ident, lambda: _Child(ident, log, refs, linger), name=ident, **kwargs)  # type: ignore[arg-type]


async def test_started_children_are_shut_down_in_reverse_order_and_terminate_runs() -> None:
    """OTP: when a child's start fails, the supervisor first terminates all already started
    children with reason shutdown (in reverse start order), then fails itself; the children
    after the failing one are never started."""
    log: list[str] = []
    refs: dict[str, ActorRef[_Child]] = {}
    async with open_runtime() as rt:
        with pytest.raises(ActorInitFailed) as info:
            await rt.supervise(
                [
                    _child("a", log, refs),
                    _child("b", log, refs, linger=0.01),
                    ChildSpec("bad", _FailsInit),
                    _child("c", log, refs),
                ],
                backoff=Backoff.none(),
            )
        assert log == [
            "start:a",
            "start:b",
            "terminate:b:shutdown",
            "stopped:b",
            "terminate:a:shutdown",
            "stopped:a",
        ]
        assert isinstance(info.value.__cause__, ActorInitFailed)
        assert isinstance(info.value.__cause__.__cause__, OSError)
        for ident in "ab":
            reason = refs[ident].exit_reason
            assert reason is not None and reason.kind == "shutdown"
            assert rt.whereis(ident) is None
        assert "c" not in refs


async def test_each_child_gets_its_shutdown_timeout_before_it_is_cancelled() -> None:
    """OTP: a child is terminated according to its shutdown spec: told to stop, given its
    shutdown time, killed only once that has passed; the next child in reverse start order
    is stopped only after the previous one is gone."""
    log: list[str] = []
    refs: dict[str, ActorRef[_Child]] = {}
    async with open_runtime() as rt:
        started = anyio.current_time()
        with pytest.raises(ActorInitFailed):
            await rt.supervise(
                [
                    _child("a", log, refs, linger=0.02, shutdown=5.0),
                    _child("slow", log, refs, linger=None, shutdown=0.05),
                    ChildSpec("bad", _FailsInit),
                ]
            )
        assert anyio.current_time() - started >= 0.05
        assert log == [
            "start:a",
            "start:slow",
            "terminate:slow:shutdown",  # never finishes: cancelled after its 0.05 s
            "terminate:a:shutdown",
            "stopped:a",  # a's 0.02 s terminate ran to the end within its 5 s
        ]
        slow, a = refs["slow"].exit_reason, refs["a"].exit_reason
        assert slow is not None and slow.kind == "killed"
        assert a is not None and a.kind == "shutdown"


async def test_a_start_function_that_raises_is_a_failed_start_too() -> None:
    """OTP: "If any child process start function fails [...] the supervisor first terminates
    all already started child processes with reason shutdown": a start function that raises
    (or a name already taken) counts, not only an init that raises."""
    log: list[str] = []
    refs: dict[str, ActorRef[_Child]] = {}

    def broken_factory() -> Actor[None]:
        raise ValueError("no such model")

    async with open_runtime() as rt:
        taken = await rt.spawn(_Child("taken", log, refs), name="taken")
        for bad in (ChildSpec("bad", broken_factory), _child("taken", log, refs)):
            log.clear()
            with pytest.raises(ActorInitFailed):
                await rt.supervise([_child("a", log, refs), bad])
            assert log == ["start:a", "terminate:a:shutdown", "stopped:a"]
        assert taken.alive


def _inner(log: list[str], refs: dict[str, ActorRef[_Child]]) -> Supervisor:
    return Supervisor(
        [_child("x", log, refs), ChildSpec("bad", _FailsInit), _child("y", log, refs)]
    )


async def test_a_nested_supervisors_failed_start_propagates_the_same_way() -> None:
    """OTP: a supervisor is a child whose start fails when one of its own children's start
    fails (after it has shut down its started children); its parent then shuts down its own
    already started children in reverse order and fails in turn."""
    log: list[str] = []
    refs: dict[str, ActorRef[_Child]] = {}
    async with open_runtime() as rt:
        with pytest.raises(ActorInitFailed) as info:
            await rt.supervise(
                [
                    _child("a", log, refs),
                    ChildSpec("inner", lambda: _inner(log, refs), shutdown=None),
                    _child("b", log, refs),
                ]
            )
        assert log == [
            "start:a",
            "start:x",
            "terminate:x:shutdown",
            "stopped:x",
            "terminate:a:shutdown",
            "stopped:a",
        ]
        inner_failed = info.value.__cause__
        assert isinstance(inner_failed, ActorInitFailed)
        assert "Supervisor.init() failed" in str(inner_failed)
        assert isinstance(inner_failed.__cause__, ActorInitFailed)
        assert isinstance(inner_failed.__cause__.__cause__, OSError)
        assert rt.whereis("a") is None and rt.whereis("x") is None


async def test_a_dynamic_nested_supervisor_that_fails_to_start_leaves_its_parent_running() -> None:
    """OTP, supervisor:start_child/2: a child supervisor whose start fails has first
    terminated its already started children; the parent returns the error and lives on."""
    log: list[str] = []
    refs: dict[str, ActorRef[_Child]] = {}
    async with open_runtime() as rt:
        sup = await rt.supervise([_child("a", log, refs)])
        with pytest.raises(ActorInitFailed):
            await sup.start_child(ChildSpec("inner", lambda: _inner(log, refs), shutdown=None))
        assert log == ["start:a", "start:x", "terminate:x:shutdown", "stopped:x"]
        assert [c.id for c in await sup.which_children()] == ["a"]
        assert refs["a"].alive


def _broken_factory() -> Actor[None]:
    raise ValueError("no such model")


async def test_start_child_with_a_failing_start_function_returns_the_error() -> None:
    """OTP, supervisor:start_child/2: if the child's start function fails, the call returns
    {error, Error} and the supervisor goes on (it does not crash)."""
    async with open_runtime() as rt:
        sup = await rt.supervise([])
        with pytest.raises(ActorInitFailed, match="'bad' could not be started") as info:
            await sup.start_child(ChildSpec("bad", _broken_factory))
        assert isinstance(info.value.__cause__, ValueError)
        assert await sup.which_children() == []
        assert (await sup.count_children()).specs == 0


async def test_a_restart_whose_start_function_fails_counts_toward_intensity() -> None:
    """OTP: a restart that fails to start the child is retried like a crash of that child,
    within the restart intensity; past it the supervisor terminates."""
    attempts: list[int] = []

    def start() -> Actor[None]:
        attempts.append(1)
        if len(attempts) > 1:
            raise ValueError("no such model")
        return _Child("c", [], {})

    async with open_runtime() as rt:
        sup = await rt.supervise([ChildSpec("c", start, name="c")], max_restarts=2)
        ref = rt.whereis("c")
        assert ref is not None
        await ref.stop()  # a permanent child: restarted, and each restart fails
        reason = await sup.wait()
        assert reason.kind == "crashed"
        assert len(attempts) == 1 + 2
