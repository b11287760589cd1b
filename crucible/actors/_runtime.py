"""``open_runtime()``: the structured owner of every actor, and the name registry."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import attrs

from ._actor import Actor
from ._cell import Cell
from ._deadlines import Deadlines
from ._errors import NameTaken
from ._mailbox import Overflow
from ._reason import ExitReason
from ._ref import ActorRef

if TYPE_CHECKING:
    from ._supervisor import SupervisorRef

log = logging.getLogger("crucible.actors")

A = TypeVar("A", bound=Actor[Any])


@attrs.frozen
class RuntimeEvent:
    """What the runtime reports to listeners: ``crashed`` (an actor's handler, init or timer
    raised), ``restarted`` (a supervisor started a new incarnation after ``delay`` seconds),
    ``escalated`` (a supervisor exceeded its restart intensity)."""

    kind: str
    actor: str
    reason: ExitReason | None = None
    supervisor: str | None = None
    delay: float | None = None


Listener = Callable[[RuntimeEvent], None]


class Runtime:
    """Owns actors started with ``spawn`` (in a task group) and the names they go by.

    Use ``open_runtime()`` to get one; leaving that block stops every actor, newest first.
    """

    def __init__(self, task_group: anyio.abc.TaskGroup) -> None:
        self._tg = task_group
        self._names: dict[str, Cell] = {}
        self._roots: list[Cell] = []
        self._listeners: list[Listener] = []
        self._closing = False
        self._name_waiters: dict[str, list[anyio.Event]] = {}
        self.deadlines = Deadlines()

    # -- starting actors ---------------------------------------------------------------------

    def _cell(
        self,
        actor: Actor[Any],
        *,
        name: str | None,
        mailbox_size: int | None,
        overflow: Overflow | None,
        shutdown: float | None,
        on_exit: Callable[[Cell, ExitReason], None] | None,
    ) -> Cell:
        cell = Cell(
            actor,
            self,
            name=name,
            mailbox_size=mailbox_size,
            overflow=overflow,
            shutdown=shutdown,
            on_exit=on_exit,
        )
        if name is not None:
            self._claim(name, cell)
        return cell

    async def spawn(
        self,
        actor: A,
        *,
        name: str | None = None,
        mailbox_size: int | None = None,
        overflow: Overflow | None = None,
        shutdown: float | None = 5.0,
    ) -> ActorRef[A]:
        """Start ``actor`` and return its ref once ``init`` has finished (ActorInitFailed if
        it raised). ``shutdown`` is how long it gets to stop when the runtime closes."""
        if self._closing:
            raise RuntimeError("the runtime is shutting down; no new actors")
        cell = self._cell(
            actor,
            name=name,
            mailbox_size=mailbox_size,
            overflow=overflow,
            shutdown=shutdown,
            on_exit=self._root_exited,
        )
        self._roots.append(cell)
        ref: ActorRef[A] = await self._tg.start(cell.run)
        return ref

    async def supervise(
        self,
        *args: Any,
        name: str | None = None,
        **kwargs: Any,
    ) -> SupervisorRef:
        """``spawn(Supervisor(*args, **kwargs))`` returning a SupervisorRef."""
        from ._supervisor import Supervisor, SupervisorRef

        ref = await self.spawn(Supervisor(*args, **kwargs), name=name, shutdown=None)
        return SupervisorRef(ref)

    def _root_exited(self, cell: Cell, reason: ExitReason) -> None:
        if cell in self._roots:
            self._roots.remove(cell)
        if reason.kind == "crashed":
            log.error("%s crashed", cell.label, exc_info=reason.error)

    # -- names -------------------------------------------------------------------------------

    def register(self, name: str, ref: ActorRef[Any]) -> None:
        """Give a live actor a name; NameTaken if another live actor has it."""
        self._claim(name, ref._cell)

    def _claim(self, name: str, cell: Cell) -> None:
        if not name:
            raise ValueError("an actor name must be a non-empty string")
        holder = self._names.get(name)
        if holder is not None and holder is not cell and holder.alive:
            raise NameTaken(f"the name {name!r} is already registered to {holder.ref!r}")
        self._names[name] = cell
        for waiter in self._name_waiters.pop(name, ()):
            waiter.set()

    def unregister(self, name: str) -> None:
        self._names.pop(name, None)

    def whereis(self, name: str) -> ActorRef[Any] | None:
        """The live actor registered under ``name``, or None."""
        cell = self._names.get(name)
        return cell.ref if cell is not None and cell.alive else None

    async def lookup(self, name: str, timeout: float | None = 5.0) -> ActorRef[Any]:
        """The live actor registered under ``name``, waiting up to ``timeout`` seconds for one
        (e.g. while a supervisor restarts it). Raises LookupError naming the name after that."""
        with anyio.move_on_after(timeout):
            while True:
                ref = self.whereis(name)
                if ref is not None:
                    return ref
                registered = anyio.Event()
                self._name_waiters.setdefault(name, []).append(registered)
                await registered.wait()
        raise LookupError(f"no live actor registered as {name!r} within {timeout}s")

    def registered(self) -> list[str]:
        return sorted(n for n, c in self._names.items() if c.alive)

    def _forget(self, cell: Cell) -> None:
        for name, holder in list(self._names.items()):
            if holder is cell:
                del self._names[name]

    # -- observing ---------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` for every RuntimeEvent (crashes, restarts, escalations).
        A listener that raises is removed and logged; it never breaks the runtime."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(
        self,
        kind: str,
        cell: Cell,
        reason: ExitReason | None = None,
        *,
        supervisor: Cell | None = None,
        delay: float | None = None,
    ) -> None:
        if not self._listeners:
            return
        event = RuntimeEvent(
            kind,
            cell.label,
            reason,
            supervisor.label if supervisor is not None else None,
            delay,
        )
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("runtime listener %r raised; removed", listener)
                self.remove_listener(listener)

    # -- shutdown ----------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop every top-level actor, newest first, each within its shutdown timeout."""
        self._closing = True
        while self._roots:
            cell = self._roots.pop()
            await cell.stop(cell.shutdown)


@asynccontextmanager
async def open_runtime() -> AsyncIterator[Runtime]:
    """Own a tree of actors for the duration of the block.

    On exit (normal, exception or cancellation) every actor is stopped in reverse start order,
    each given its shutdown timeout; no actor outlives the block.
    """
    try:
        async with anyio.create_task_group() as tg:
            runtime = Runtime(tg)
            tg.start_soon(runtime.deadlines.keep)
            try:
                yield runtime
            finally:
                with anyio.CancelScope(shield=True):
                    await runtime.shutdown()
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Actors never raise into this group (their tasks catch everything), so a lone error
        # is the caller's own: re-raise it as it was, not wrapped in a group.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise


class NamedRef:
    """Reaches whichever actor is registered under ``name`` at each operation, waiting up to
    ``timeout`` seconds for one (a supervised child being restarted), so a handle given out
    once keeps working across restarts. A call that reached an incarnation which then died is
    not resent: it raises as ``ActorRef.call`` does."""

    __slots__ = ("name", "runtime", "timeout")

    def __init__(self, runtime: Runtime, name: str, *, timeout: float | None = 5.0) -> None:
        self.runtime = runtime
        self.name = name
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<NamedRef {self.name!r}>"

    async def call(self, message: Any, timeout: float | None = 5.0) -> Any:
        ref = await self.runtime.lookup(self.name, self.timeout)
        return await ref.call(message, timeout=timeout)

    async def cast(self, message: Any) -> None:
        ref = await self.runtime.lookup(self.name, self.timeout)
        await ref.cast(message)

    def send_info(self, message: Any) -> None:
        ref = self.runtime.whereis(self.name)
        if ref is None:
            raise LookupError(f"no live actor registered as {self.name!r}")
        ref.send_info(message)
