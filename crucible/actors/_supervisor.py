"""Supervisors: restart children by strategy, within a restart intensity, with backoff.

Children start in spec order and stop in reverse order. When a child exits, its ``restart``
type decides whether it comes back; the ``strategy`` decides which siblings restart with it.
More than ``max_restarts`` restarts within ``max_seconds`` and the supervisor stops all its
children and crashes with RestartIntensityExceeded, so its own parent decides (escalation).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal, get_args

import anyio
import attrs
import msgspec

from ._actor import Actor, Request, handler
from ._cell import Cell
from ._children import ChildCounts, ChildInfo, ChildSpec, ChildStatus, RestartType
from ._errors import (
    ActorInitFailed,
    ChildAlreadyExists,
    ChildNotFound,
    ChildRunning,
    RestartIntensityExceeded,
)
from ._reason import SHUTDOWN, ExitReason, crashed
from ._ref import ActorRef
from ._restart import Backoff, RestartIntensity

log = logging.getLogger("crucible.actors")

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]


@attrs.define
class _Child:
    spec: ChildSpec
    cell: Cell | None = None
    status: ChildStatus = "stopped"
    restarts: int = 0
    is_supervisor: bool = False


# -- the supervisor's protocol -----------------------------------------------------------------


class StartChild(Request[ActorRef[Any]], frozen=True):
    spec: ChildSpec


class TerminateChild(Request[None], frozen=True):
    id: str


class RestartChild(Request[ActorRef[Any]], frozen=True):
    id: str


class DeleteChild(Request[None], frozen=True):
    id: str


class WhichChildren(Request[list[ChildInfo]], frozen=True):
    pass


class CountChildren(Request[ChildCounts], frozen=True):
    pass


class _ChildExited(msgspec.Struct, frozen=True):
    cell: Any
    reason: Any


class _RestartDue(msgspec.Struct, frozen=True):
    ids: tuple[str, ...]
    generation: int
    delay: float


class Supervisor(Actor[None]):
    """An actor whose job is to keep its children running; see the module docstring."""

    caller_errors = (ChildNotFound, ChildAlreadyExists, ChildRunning, ActorInitFailed)

    def __init__(
        self,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        backoff: Backoff | None = None,
    ) -> None:
        if strategy not in get_args(Strategy):
            raise ValueError(f"strategy must be one of {get_args(Strategy)}, got {strategy!r}")
        ids = [spec.id for spec in children]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ChildAlreadyExists(f"duplicate child ids: {duplicates}")
        self.strategy: Strategy = strategy
        self.backoff = backoff if backoff is not None else Backoff()
        self._intensity = RestartIntensity(max_restarts, max_seconds)
        self._rng = self.backoff.rng()
        self._children = [_Child(spec) for spec in children]
        self._generation = 0  # invalidates restarts scheduled before a newer decision

    async def init(self) -> None:
        for child in self._children:
            try:
                await self._start(child)
            except ActorInitFailed:
                # As OTP: first shut down the children already started (reverse order, each
                # within its shutdown timeout, terminate runs), then fail.
                await self.terminate(SHUTDOWN, None)
                raise

    async def terminate(self, reason: ExitReason, state: None) -> None:
        for child in reversed(self._children):
            await self._stop(child)

    # -- starting and stopping one child -----------------------------------------------------

    async def _start(self, child: _Child) -> ActorRef[Any]:
        """Start one incarnation; ActorInitFailed however it fails (as in OTP, a failing start
        function is a failed start, like a failing init)."""
        spec = child.spec
        try:
            actor = spec.start()
            child.is_supervisor = isinstance(actor, Supervisor)
            cell = self.runtime._cell(
                actor,
                name=spec.name,
                mailbox_size=spec.mailbox_size,
                overflow=spec.overflow,
                shutdown=spec.shutdown,
                on_exit=self._child_exited,
            )
        except Exception as exc:
            raise ActorInitFailed(f"child {spec.id!r} could not be started: {exc!r}") from exc
        child.cell = cell
        child.status = "running"
        try:
            return await self._running_cell().start_linked(cell)
        except BaseException:
            child.cell = None
            child.status = "stopped"
            raise

    async def _stop(self, child: _Child) -> None:
        cell, child.cell = child.cell, None  # its exit notice is now stale and ignored
        child.status = "stopped"
        if cell is not None:
            await cell.stop(child.spec.shutdown)

    def _child_exited(self, cell: Cell, reason: ExitReason) -> None:
        # Runs in the child's task as it finishes: hand it to our own mailbox.
        self.ref._cell.mailbox.put_system(_ChildExited(cell, reason))

    # -- reacting to exits -------------------------------------------------------------------

    @handler
    async def _on_child_exited(self, message: _ChildExited) -> None:
        child = next((c for c in self._children if c.cell is message.cell), None)
        if child is None:
            return  # an incarnation we stopped ourselves, or one already replaced
        child.cell = None
        reason: ExitReason = message.reason
        if not self._should_restart(child.spec.restart, reason):
            child.status = "stopped"
            if child.spec.restart == "temporary":
                self._children.remove(child)
            return
        await self._restart_after_failure(child, reason)

    @staticmethod
    def _should_restart(restart: RestartType, reason: ExitReason) -> bool:
        if restart == "permanent":
            return True
        return restart == "transient" and reason.abnormal

    def _affected(self, child: _Child) -> list[_Child]:
        if self.strategy == "one_for_one":
            return [child]
        if self.strategy == "one_for_all":
            return list(self._children)
        return self._children[self._children.index(child) :]

    async def _restart_after_failure(self, child: _Child, reason: ExitReason) -> None:
        if not self._intensity.record(anyio.current_time()):
            message = (
                f"{self._running_cell().label}: more than {self._intensity.max_restarts} "
                f"restarts within {self._intensity.max_seconds}s; last: "
                f"child {child.spec.id!r} exited with {reason}"
            )
            self.runtime._emit("escalated", self._running_cell(), reason)
            raise RestartIntensityExceeded(message) from reason.error
        group = self._affected(child)
        for sibling in reversed(group):
            if sibling is not child and sibling.cell is not None:
                await self._stop(sibling)
        # A temporary sibling stopped for the group is not restarted (as in OTP).
        for sibling in [s for s in group if s is not child and s.spec.restart == "temporary"]:
            self._children.remove(sibling)
        group = [c for c in group if c in self._children]
        for member in group:
            member.status = "restarting"
        delay = self.backoff.delay(self._intensity.recent - 1, self._rng)
        log.info(
            "%s: child %r exited (%s); restarting %s in %.3gs",
            self._running_cell().label,
            child.spec.id,
            reason,
            [c.spec.id for c in group],
            delay,
        )
        self._generation += 1
        ids = tuple(c.spec.id for c in group)
        if delay <= 0:
            await self._restart_group(ids, delay)
        else:
            self.send_after(delay, _RestartDue(ids, self._generation, delay))

    @handler
    async def _on_restart_due(self, message: _RestartDue) -> None:
        if message.generation == self._generation:
            await self._restart_group(message.ids, message.delay)

    async def _restart_group(self, ids: tuple[str, ...], delay: float) -> None:
        for child in [c for c in self._children if c.spec.id in ids]:
            if child.status != "restarting":
                continue
            child.restarts += 1
            try:
                await self._start(child)
            except ActorInitFailed as exc:
                # A failed restart counts like a crash of that child.
                await self._restart_after_failure(child, crashed(exc.__cause__ or exc))
                return
            assert child.cell is not None
            self.runtime._emit(
                "restarted", child.cell, supervisor=self._running_cell(), delay=delay
            )

    # -- the management API ------------------------------------------------------------------

    def _find(self, child_id: str) -> _Child:
        for child in self._children:
            if child.spec.id == child_id:
                return child
        raise ChildNotFound(f"no child {child_id!r} under {self._running_cell().label}")

    @handler
    async def _on_start_child(self, message: StartChild) -> ActorRef[Any]:
        if any(c.spec.id == message.spec.id for c in self._children):
            raise ChildAlreadyExists(f"a child with id {message.spec.id!r} exists")
        child = _Child(message.spec)
        self._children.append(child)
        try:
            return await self._start(child)
        except ActorInitFailed:
            self._children.remove(child)
            raise

    @handler
    async def _on_terminate_child(self, message: TerminateChild) -> None:
        child = self._find(message.id)
        await self._stop(child)
        if child.spec.restart == "temporary":
            self._children.remove(child)

    @handler
    async def _on_restart_child(self, message: RestartChild) -> ActorRef[Any]:
        child = self._find(message.id)
        if child.cell is not None:
            raise ChildRunning(f"child {message.id!r} is running; terminate it first")
        return await self._start(child)

    @handler
    def _on_delete_child(self, message: DeleteChild) -> None:
        child = self._find(message.id)
        if child.cell is not None:
            raise ChildRunning(f"terminate child {message.id!r} before deleting it")
        self._children.remove(child)

    @handler
    def _on_which_children(self, message: WhichChildren) -> list[ChildInfo]:
        return [
            ChildInfo(
                c.spec.id,
                c.cell.ref if c.cell is not None and c.cell.alive else None,
                c.status,
                c.spec.restart,
                c.restarts,
                c.is_supervisor,
            )
            for c in self._children
        ]

    @handler
    def _on_count_children(self, message: CountChildren) -> ChildCounts:
        active = [c for c in self._children if c.cell is not None and c.cell.alive]
        supervisors = sum(c.is_supervisor for c in self._children)
        return ChildCounts(
            specs=len(self._children),
            active=len(active),
            supervisors=supervisors,
            workers=len(self._children) - supervisors,
        )


class SupervisorRef:
    """Typed access to a supervisor's management API."""

    __slots__ = ("ref",)

    def __init__(self, ref: ActorRef[Any]) -> None:
        self.ref = ref

    def __repr__(self) -> str:
        return f"<SupervisorRef {self.ref!r}>"

    async def _ask(self, message: Any, timeout: float | None) -> Any:
        return await self.ref.call(message, timeout=timeout)

    async def start_child(self, spec: ChildSpec, timeout: float | None = 5.0) -> ActorRef[Any]:
        return await self._ask(StartChild(spec), timeout)  # type: ignore[no-any-return]

    async def terminate_child(self, child_id: str, timeout: float | None = None) -> None:
        await self._ask(TerminateChild(child_id), timeout)

    async def restart_child(self, child_id: str, timeout: float | None = 5.0) -> ActorRef[Any]:
        return await self._ask(RestartChild(child_id), timeout)  # type: ignore[no-any-return]

    async def delete_child(self, child_id: str, timeout: float | None = 5.0) -> None:
        await self._ask(DeleteChild(child_id), timeout)

    async def which_children(self, timeout: float | None = 5.0) -> list[ChildInfo]:
        return await self._ask(WhichChildren(), timeout)  # type: ignore[no-any-return]

    async def count_children(self, timeout: float | None = 5.0) -> ChildCounts:
        return await self._ask(CountChildren(), timeout)  # type: ignore[no-any-return]

    async def stop(self, timeout: float | None = None) -> ExitReason:
        return await self.ref.stop(timeout)

    async def wait(self) -> ExitReason:
        return await self.ref.wait()
