"""The one place that knows which event loop runs: asyncio or trio.

Everything else in crucible is written against anyio; three things are cheaper (or only
possible) done natively, and they live here:

- one-shot wake-up slots for the hot path (below);
- the running loop's clock, read without anyio's per-call dispatch (``loop_clock``);
- waking the loop from another thread when a ``concurrent.futures.Future`` completes
  (``wait_thread_future``), with no thread blocked per waiter.

Wake-up slots:

A call waits for exactly one reply and an idle actor waits for exactly one "you have mail".
anyio.Event is general (and costs several microseconds on asyncio, most of it finding the
backend); a one-shot slot needs only what each loop already has: a bare future on asyncio,
``wait_task_rescheduled`` on trio. Cancellation stays the loop's own, so anyio cancel scopes
around a wait work as usual. Everything off the hot path uses plain anyio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Generator
from functools import partial
from typing import Any, Protocol, TypeVar

import anyio
import sniffio

T = TypeVar("T")


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


def loop_clock() -> Callable[[], float]:
    """The running loop's clock (what anyio.current_time reads), without per-call dispatch."""
    if sniffio.current_async_library() == "asyncio":
        return asyncio.get_running_loop().time
    import trio

    return trio.current_time


async def wait_thread_future(future: concurrent.futures.Future[T]) -> T:
    """The result of ``future``, which another thread completes, awaited from asyncio or trio.

    No thread blocks while waiting: the future's done-callback wakes this loop
    (``call_soon_threadsafe`` on asyncio, ``run_sync_soon`` on trio). Cancelling the waiter
    only stops the wait; the future is never cancelled, so work that was submitted runs to
    completion and a later wait still gets its result.
    """
    if not future.done():
        woken = anyio.Event()
        future.add_done_callback(_thread_waker(woken))
        await woken.wait()
    return future.result()


def _thread_waker(event: anyio.Event) -> Callable[[concurrent.futures.Future[Any]], None]:
    """A done-callback, run on whatever thread completes the future, that sets ``event`` on
    the current event loop without blocking that thread."""
    if sniffio.current_async_library() == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()

        def wake_trio(_future: concurrent.futures.Future[Any]) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # the run ended: nobody waits
                token.run_sync_soon(event.set)

        return wake_trio
    loop = asyncio.get_running_loop()

    def wake_asyncio(_future: concurrent.futures.Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(event.set)

    return wake_asyncio
