"""Awaitable results of submitted backend operations (Tinker's two-stage shape).

``fut = await backend.forward_backward(...)`` submits and returns at once; ``await fut`` waits
for the result. Work that was submitted runs to completion whether or not anyone waits for it:
cancelling or timing out a waiter only stops that waiter, it never cancels the operation half
way (cancelling a queued Tinker future wedges its TrainingClient; Crucible's backends never do).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

from crucible.actors import wait_thread_future

T = TypeVar("T")


class BackendFuture(Generic[T]):
    """The result of an operation that another thread completes (the local backend's worker,
    the Tinker SDK's thread).

    May be awaited any number of times, from asyncio or trio; waiting holds no thread (the
    future's done-callback wakes the loop). A cancelled waiter leaves the operation running; a
    later ``await`` still gets its result.
    """

    __slots__ = ("_future",)

    def __init__(self, future: concurrent.futures.Future[T]) -> None:
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    async def result_async(self) -> T:
        return await wait_thread_future(self._future)

    def __await__(self) -> Generator[Any, None, T]:
        return self.result_async().__await__()


class DeferredResult(Generic[T]):
    """An awaitable computed by ``produce`` on each await (used by wrappers such as FaultyBackend
    to add behaviour around an inner backend's future)."""

    __slots__ = ("_produce",)

    def __init__(self, produce: Callable[[], Awaitable[T]]) -> None:
        self._produce = produce

    def __await__(self) -> Generator[Any, None, T]:
        return self._produce().__await__()
