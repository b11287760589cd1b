"""Call timeouts in 10 ms buckets: one timer per bucket, not one per call.

Arming a loop timer (or a cancel scope) for every call cost about a third of a call's round
trip. Calls instead join the set of the bucket their deadline falls in; a keeper task owned by
the runtime wakes once per non-empty bucket and fails the calls still waiting in it with
TimedOut. A call that gets its reply leaves its bucket, so nothing is kept alive for the
length of its timeout. Timeouts therefore fire up to RESOLUTION seconds late, never early.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import anyio

from ._loop import Slot, TimedOut, loop_clock

RESOLUTION = 0.01


class Deadlines:
    __slots__ = ("_buckets", "_now", "_ticks", "_wake")

    def __init__(self) -> None:
        self._now: Callable[[], float] = loop_clock()
        self._buckets: dict[int, set[Slot]] = {}
        self._ticks: list[int] = []  # heap of bucket ticks
        self._wake: anyio.Event | None = None

    def add(self, slot: Slot, timeout: float) -> set[Slot]:
        """Fail ``slot`` with TimedOut once ``timeout`` seconds have passed, unless it is
        discarded from the returned bucket first."""
        tick = math.ceil((self._now() + timeout) / RESOLUTION)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = set()
            heapq.heappush(self._ticks, tick)
            if self._ticks[0] == tick and self._wake is not None:
                self._wake.set()  # the keeper sleeps towards a later bucket: re-aim it
        bucket.add(slot)
        return bucket

    async def keep(self) -> None:
        """Run for the runtime's lifetime, expiring due buckets."""
        while True:
            self._wake = anyio.Event()
            if not self._ticks:
                await self._wake.wait()
                continue
            tick = self._ticks[0]
            due = tick * RESOLUTION
            if self._now() < due:
                with anyio.CancelScope(deadline=due):
                    await self._wake.wait()
                continue
            heapq.heappop(self._ticks)
            for slot in self._buckets.pop(tick):
                slot.fail(TimedOut())
