"""The machinery that runs one incarnation of an actor: its task, mailbox loop and exit.

A Cell owns a task group (for the actor's timers and, for supervisors, its children) and a
cancel scope that ``kill`` cancels. Whatever way the actor ends, ``_finish`` records its exit
reason, then answers every caller still waiting (``ActorCrashed`` for the call whose handler
crashed, ``ActorDead`` for the rest) and tells whoever started it (``on_exit``). As with
gen_server, no caller hears of the end before it is over: ``terminate`` has run (or been cut
short) and ``exit_reason`` is set.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from ._actor import Actor
from ._errors import ActorCrashed, ActorDead, ActorError, ActorInitFailed
from ._mailbox import Call, Mailbox, Overflow
from ._reason import KILLED, NORMAL, SHUTDOWN, ExitReason, crashed
from ._ref import ActorRef
from ._timers import Timer

if TYPE_CHECKING:
    from ._runtime import Runtime

log = logging.getLogger("crucible.actors")

# The cell whose task is running, so a call from an actor to itself fails fast.
current_cell: ContextVar[Cell | None] = ContextVar("crucible_current_actor", default=None)

# Messages handled between two forced checkpoints when the mailbox never runs dry: enough to
# amortise the checkpoint, small enough that other tasks (and cancellation) are not starved.
_BATCH = 64

ExitCallback = Callable[["Cell", ExitReason], None]


class Cell:
    __slots__ = (
        "_done",
        "_in_flight",
        "_owed",
        "_scope",
        "_stop_reason",
        "_tg",
        "actor",
        "exit_reason",
        "handlers",
        "label",
        "mailbox",
        "name",
        "on_exit",
        "ref",
        "runtime",
        "shutdown",
    )

    def __init__(
        self,
        actor: Actor[Any],
        runtime: Runtime,
        *,
        name: str | None,
        mailbox_size: int | None,
        overflow: Overflow | None,
        shutdown: float | None,
        on_exit: ExitCallback | None,
    ) -> None:
        if not isinstance(actor, Actor):
            raise TypeError(f"spawn expects an Actor instance, got {actor!r}")
        if actor._cell is not None:
            raise RuntimeError(
                f"{type(actor).__name__} instance was already started once; "
                f"pass a fresh instance (a ChildSpec's start builds one per incarnation)"
            )
        self.actor = actor
        self.handlers = type(actor)._handlers
        self.runtime = runtime
        self.name = name
        self.label = f"{type(actor).__name__}" + (f"({name!r})" if name else "")
        self.mailbox = Mailbox(
            self.label,
            mailbox_size if mailbox_size is not None else actor.mailbox_size,
            overflow if overflow is not None else actor.overflow,
        )
        self.shutdown = shutdown
        self.on_exit = on_exit
        self.ref: ActorRef[Any] = ActorRef(self)
        self.exit_reason: ExitReason | None = None
        self._stop_reason: ExitReason | None = None
        self._in_flight: Call | None = None
        self._owed: list[tuple[Call, ActorError]] = []  # answered once the actor has ended
        self._done = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        actor._cell = self

    def handles(self, message: Any) -> bool:
        return type(self.actor).handler_for(type(message)) is not None

    @property
    def alive(self) -> bool:
        return self.mailbox.closed is None

    # -- the actor's task --------------------------------------------------------------------

    async def run(
        self, *, task_status: TaskStatus[ActorRef[Any]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the actor until it stops. Reports started (with its ref) once ``init`` is done;
        if ``init`` raises, raises ActorInitFailed instead (to whoever is starting it)."""
        current_cell.set(self)
        reason = KILLED
        init_error: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                with anyio.CancelScope() as scope:
                    self._scope = scope
                    try:
                        self.actor.state = await self.actor.init()
                    except Exception as exc:
                        init_error = exc
                        reason = crashed(exc)
                    else:
                        task_status.started(self.ref)
                        reason = await self._serve()
                        self._close_mailbox(reason)
                        await self._terminate(reason)
                if scope.cancelled_caught:
                    reason = KILLED
                tg.cancel_scope.cancel()  # timers; a supervisor's children are already stopped
        finally:
            self._finish(reason)
        if init_error is not None:
            raise ActorInitFailed(f"{self.label}.init() failed: {init_error!r}") from init_error
        if self.actor._cell is self and not hasattr(self.actor, "state"):
            raise ActorInitFailed(f"{self.label} was stopped before init() finished")

    async def _serve(self) -> ExitReason:
        mailbox = self.mailbox
        items = mailbox.items
        take = items.popleft
        parked = mailbox.parked
        actor = self.actor
        lookup = type(actor).handler_for
        handlers = self.handlers
        budget = _BATCH
        while self._stop_reason is None:
            if not items:
                await mailbox.wait()
                budget = _BATCH
                continue
            item = take()
            if parked:
                mailbox.admit_parked()
            if type(item) is Call:
                call: Call | None = item
                message = item.message
                self._in_flight = item
            else:
                call = None
                message = item
            entry = handlers.get(type(message)) or lookup(type(message))
            if entry is None:
                # Only info messages get here (calls and casts are checked when sent).
                log.debug("%s: no handler for info message %r, dropped", self.label, message)
                continue
            fn, is_async = entry
            try:
                result = fn(actor, message)
                if is_async:
                    result = await result
            except Exception as exc:
                if isinstance(exc, type(actor).caller_errors):
                    if call is not None:
                        call.fail(exc)
                        self._in_flight = None
                    else:
                        log.warning("%s refused %r: %s", self.label, message, exc)
                    continue
                if call is not None:
                    error = ActorCrashed(
                        f"{self.label} crashed handling {type(message).__name__}: {exc!r}"
                    )
                    error.__cause__ = exc
                    self._owed.append((call, error))
                    self._in_flight = None
                return crashed(exc)
            if call is not None:
                call.resolve(result)
                self._in_flight = None
            budget -= 1
            if not budget:
                budget = _BATCH
                await anyio.lowlevel.checkpoint()
        return self._stop_reason

    async def _terminate(self, reason: ExitReason) -> None:
        try:
            await self.actor.terminate(reason, self.actor.state)
        except Exception:
            log.exception("%s.terminate(%s) raised", self.label, reason)

    def _close_mailbox(self, reason: ExitReason) -> None:
        """Refuse new messages; the calls already sent are answered ActorDead by ``_finish``."""
        if self.mailbox.closed is not None:
            return
        why = f"{self.label} has stopped ({reason})"
        owed = self._owed
        for item in self.mailbox.close(why):
            if type(item) is Call:
                owed.append((item, ActorDead(why)))
        if self._in_flight is not None:
            owed.append((self._in_flight, ActorDead(why)))
            self._in_flight = None

    def _finish(self, reason: ExitReason) -> None:
        self._close_mailbox(reason)
        self.exit_reason = reason
        self.runtime._forget(self)
        self._done.set()
        for call, error in self._owed:
            call.fail(error)
        self._owed.clear()
        if reason.kind == "crashed":
            self.runtime._emit("crashed", self, reason)
        if self.on_exit is not None:
            self.on_exit(self, reason)

    # -- control from outside ----------------------------------------------------------------

    def request_stop(self, reason: ExitReason | None) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason or NORMAL
            self.mailbox.wake()

    def kill(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def stop(self, timeout: float | None) -> ExitReason:
        """Ask the actor to stop after its current message, give it ``timeout`` seconds for
        that and ``terminate``, then cancel it. Returns once it has fully stopped."""
        self.request_stop(SHUTDOWN)
        if timeout is None:
            await self._done.wait()
        else:
            with anyio.move_on_after(timeout):
                await self._done.wait()
            if not self._done.is_set():
                log.warning("%s did not stop within %.3gs: cancelling it", self.label, timeout)
                self.kill()
                await self._done.wait()
        assert self.exit_reason is not None
        return self.exit_reason

    async def wait(self) -> ExitReason:
        await self._done.wait()
        assert self.exit_reason is not None
        return self.exit_reason

    def start_timer(self, delay: float, message: Any, *, interval: float | None) -> Timer:
        if self._tg is None or not self.alive:
            raise ActorDead(f"{self.label} is not running")
        if delay < 0 or (interval is not None and interval <= 0):
            raise ValueError(f"timer delay must be >= 0 and interval > 0, got {delay}, {interval}")
        timer = Timer()
        self._tg.start_soon(timer.run, delay, interval, lambda: self.mailbox.put_system(message))
        return timer

    def start_linked_task(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._tg is None or not self.alive:
            raise ActorDead(f"{self.label} is not running")

        async def linked() -> None:
            try:
                await fn(*args)
            except Exception as exc:
                self.request_stop(crashed(exc))

        self._tg.start_soon(linked)

    async def start_linked(self, child: Cell) -> ActorRef[Any]:
        """Start ``child`` inside this actor's task group (a supervisor's children)."""
        assert self._tg is not None
        ref: ActorRef[Any] = await self._tg.start(child.run)
        return ref
