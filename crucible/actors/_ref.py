"""``ActorRef``: the handle through which everyone else talks to one actor incarnation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, overload

import anyio

from ._errors import ActorDead, CallTimeout, CallToSelf, UnhandledMessage
from ._loop import TimedOut
from ._mailbox import Call

if TYPE_CHECKING:
    from ._actor import Actor, Request
    from ._cell import Cell
    from ._reason import ExitReason

A = TypeVar("A", bound="Actor[Any]", covariant=True)
R = TypeVar("R")

DEFAULT_CALL_TIMEOUT = 5.0


class ActorRef(Generic[A]):
    """Refers to one incarnation of an actor. Once it stops, every operation raises
    ``ActorDead``; after a supervisor restart, ``runtime.whereis(name)`` gives the new one."""

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    @property
    def name(self) -> str | None:
        return self._cell.name

    @property
    def alive(self) -> bool:
        return self._cell.alive

    @property
    def exit_reason(self) -> ExitReason | None:
        """Why it stopped, or None while it runs."""
        return self._cell.exit_reason

    @property
    def dropped(self) -> int:
        """Messages its mailbox dropped or refused under its overflow policy."""
        return self._cell.mailbox.dropped

    @property
    def queued(self) -> int:
        return len(self._cell.mailbox.items)

    def __repr__(self) -> str:
        state = "alive" if self.alive else f"stopped: {self.exit_reason}"
        return f"<ActorRef {self._cell.label} {state}>"

    def _unhandled(self, message: Any) -> UnhandledMessage:
        return UnhandledMessage(f"{self._cell.label} has no handler for {type(message).__name__}")

    @overload
    async def call(self, message: Request[R], timeout: float | None = ...) -> R: ...
    @overload
    async def call(self, message: Any, timeout: float | None = ...) -> Any: ...
    async def call(self, message: Any, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> Any:
        """Send a request and wait for the handler's return value.

        Raises CallTimeout after ``timeout`` seconds (None waits forever; a reply that comes
        later is dropped), ActorDead if the actor stops before answering, ActorCrashed (with
        the handler's exception as ``__cause__``) if the handler raised, MailboxFull if the
        overflow policy refused the request, CallToSelf from inside the same actor.
        ActorDead and ActorCrashed come only once the actor has ended (terminate done,
        ``exit_reason`` set), as a gen_server caller learns of the server's exit.
        Cancelling the caller only stops the wait: the request may still be handled.
        """
        from ._cell import current_cell

        cell = self._cell
        if cell.mailbox.closed is not None:
            await self._once_ended(message, timeout)
        if current_cell.get() is cell:
            raise CallToSelf(
                f"{cell.label} called itself with {type(message).__name__}: it could never "
                f"answer while handling; call the method directly or cast instead"
            )
        if cell.handlers.get(type(message)) is None and not cell.handles(message):
            raise self._unhandled(message)
        mailbox = cell.mailbox
        call = Call(message, mailbox.new_slot())
        remaining = timeout
        if not mailbox.must_wait():
            mailbox.put_nowait(call)
        elif timeout is None:
            await mailbox.put(call)
        else:
            # Slow path: wait for room (back-pressure) within the same overall timeout.
            deadline = anyio.current_time() + timeout
            enqueued = False
            with anyio.move_on_after(timeout):
                await mailbox.put(call)
                enqueued = True
            if not enqueued:
                raise self._timeout(message, timeout)
            remaining = max(0.0, deadline - anyio.current_time())
        if remaining is None:
            return await call.slot
        bucket = cell.runtime.deadlines.add(call.slot, remaining)
        try:
            return await call.slot
        except TimedOut:
            raise self._timeout(message, timeout) from None
        finally:
            bucket.discard(call.slot)

    async def _once_ended(self, message: Any, timeout: float | None) -> NoReturn:
        """Fail a call to an actor that refuses messages once it has ended, within the call's
        timeout: as a gen_server caller gets a server's exit only when the server has died,
        not while its terminate runs. From the actor itself (its terminate), fail at once."""
        from ._cell import current_cell

        cell = self._cell
        if current_cell.get() is not cell:
            with anyio.move_on_after(timeout):
                await cell.wait()
            if cell.exit_reason is None:
                raise self._timeout(message, timeout)
        raise ActorDead(cell.mailbox.closed)

    def _timeout(self, message: Any, timeout: float | None) -> CallTimeout:
        return CallTimeout(
            f"{self._cell.label} did not answer {type(message).__name__} within {timeout}s"
        )

    async def cast(self, message: Any) -> None:
        """Send without waiting for a reply. Waits only under the ``block`` policy while the
        mailbox is full (back-pressure); other policies never wait."""
        cell = self._cell
        if cell.handlers.get(type(message)) is None and not cell.handles(message):
            raise self._unhandled(message)
        mailbox = cell.mailbox
        if mailbox.must_wait():
            await mailbox.put(message)
        else:
            mailbox.put_nowait(message)

    def cast_nowait(self, message: Any) -> None:
        """Send without waiting at all; a full mailbox under ``block`` raises MailboxFull."""
        cell = self._cell
        if cell.handlers.get(type(message)) is None and not cell.handles(message):
            raise self._unhandled(message)
        cell.mailbox.put_nowait(message)

    def send_info(self, message: Any) -> None:
        """Deliver a message from outside the actor's protocol (timers, notifications). An
        info message without a handler is dropped instead of raising."""
        self._cell.mailbox.put_nowait(message)

    async def stop(self, timeout: float | None = 5.0) -> ExitReason:
        """Stop the actor after its current message; after ``timeout`` seconds it is
        cancelled. Returns its exit reason once it has fully stopped."""
        return await self._cell.stop(timeout)

    async def wait(self) -> ExitReason:
        """Wait until the actor stops; returns why."""
        return await self._cell.wait()
