"""Timers owned by an actor: they live in the actor's task group and die with it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio


class Timer:
    """A pending ``send_after`` or ``send_interval``; ``cancel()`` stops it."""

    __slots__ = ("_scope",)

    def __init__(self) -> None:
        self._scope = anyio.CancelScope()

    def cancel(self) -> None:
        self._scope.cancel()

    @property
    def cancelled(self) -> bool:
        return self._scope.cancel_called

    async def run(self, delay: float, interval: float | None, deliver: Callable[[], Any]) -> None:
        with self._scope:
            deadline = anyio.current_time() + delay
            await anyio.sleep_until(deadline)
            deliver()
            while interval is not None:
                # Schedule from the previous deadline, not from now, so ticks do not drift.
                deadline += interval
                await anyio.sleep_until(deadline)
                deliver()
