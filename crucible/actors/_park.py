"""One-shot wake-ups for the hot path, native to each event loop.

A call waits for exactly one reply and an idle actor waits for exactly one "you have mail".
anyio.Event is general (and costs several microseconds on asyncio, most of it finding the
backend); a one-shot slot needs only what each loop already has: a bare future on asyncio,
``wait_task_rescheduled`` on trio. Cancellation stays the loop's own, so anyio cancel scopes
around a wait work as usual. Everything off the hot path uses plain anyio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from functools import partial
from typing import Any, Protocol

import sniffio


class TimedOut(Exception):
    """Internal: a call's deadline passed (see _deadlines)."""


class Slot(Protocol):
    """A one-shot value: set once (later sets are ignored), awaited by at most one task."""

    @property
    def done(self) -> bool: ...
    def resolve(self, value: Any) -> None: ...
    def fail(self, error: BaseException) -> None: ...
    async def wait(self) -> Any:
        """The value, or raises the error."""
        ...

    def __await__(self) -> Generator[Any, None, Any]:
        """``await slot`` is ``await slot.wait()`` (on asyncio without the extra frame)."""
        ...


class AsyncioSlot:
    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[Any] = loop.create_future()

    @property
    def done(self) -> bool:
        return self._future.done()

    def resolve(self, value: Any) -> None:
        if not self._future.done():
            self._future.set_result(value)

    def fail(self, error: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(error)

    async def wait(self) -> Any:
        return await self._future

    def __await__(self) -> Generator[Any, None, Any]:
        return self._future.__await__()


class TrioSlot:
    __slots__ = ("_outcome", "_task")

    def __init__(self) -> None:
        self._outcome: Any = None
        self._task: Any = None

    @property
    def done(self) -> bool:
        return self._outcome is not None

    def resolve(self, value: Any) -> None:
        if self._outcome is None:
            import outcome

            self._set(outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        if self._outcome is None:
            import outcome

            self._set(outcome.Error(error))

    def _set(self, result: Any) -> None:
        self._outcome = result
        task, self._task = self._task, None
        if task is not None:
            import trio

            trio.lowlevel.reschedule(task, result)

    async def wait(self) -> Any:
        import trio

        if self._outcome is not None:
            return self._outcome.unwrap()
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.wait().__await__()


def slot_factory() -> Callable[[], Slot]:
    """Makes slots for the event loop running now."""
    if sniffio.current_async_library() == "asyncio":
        return partial(AsyncioSlot, asyncio.get_running_loop())
    return TrioSlot
