"""Live metrics feeds: where each recorded event goes besides the store.

With an actor runtime, each experiment gets its own StreamingMetrics actor and the feed casts
to it; without one, the same aggregation runs in-process under a lock. A feed never raises
into the bus handler: an update that cannot be delivered (actor gone, mailbox full under its
drop policy, runtime closed) is counted in ``lost`` and dropped, so recording goes on.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import anyio.from_thread
import anyio.lowlevel

from crucible.actors import ActorError, ActorRef, Runtime
from crucible.metrics import (
    GetMetrics,
    ObserveRequest,
    Reset,
    StreamingAggregator,
    StreamingMetrics,
    StreamingSnapshot,
)
from crucible.telemetry._event import Experiment, TelemetryEvent

__all__ = ["ActorFeed", "InProcessFeed", "MetricsFeed", "spawn_actor_feed"]

#: Room for bursts; past it, updates are dropped (drop_newest) rather than stall an emitter.
MAILBOX_SIZE = 65_536


class MetricsFeed(Protocol):
    lost: int

    def observe(self, event: TelemetryEvent) -> None: ...
    async def metrics(self) -> StreamingSnapshot: ...
    async def reset(self) -> None: ...
    async def close(self) -> None: ...


class InProcessFeed:
    """The aggregation without an actor (no runtime given); emitters may be on any thread."""

    def __init__(self) -> None:
        self._aggregator = StreamingAggregator()
        self._lock = threading.Lock()
        self.lost = 0

    def observe(self, event: TelemetryEvent) -> None:
        with self._lock:
            self._aggregator.observe_request(
                event.event_name, event.latency_ms, event.cost_usd, event.success
            )

    async def metrics(self) -> StreamingSnapshot:
        with self._lock:
            return self._aggregator.snapshot()

    async def reset(self) -> None:
        with self._lock:
            self._aggregator.reset()

    async def close(self) -> None:
        pass


class ActorFeed:
    """Casts each event to the experiment's StreamingMetrics actor.

    Casting from the runtime's own thread is a plain ``cast_nowait``; from any other thread
    (a synchronous trainer next to an embedded runtime) it hops onto the runtime's loop.
    """

    def __init__(self, ref: ActorRef[StreamingMetrics], token: Any) -> None:
        self.ref = ref
        self._token = token
        self._thread = threading.get_ident()
        self.lost = 0

    def observe(self, event: TelemetryEvent) -> None:
        message = ObserveRequest(event.event_name, event.latency_ms, event.cost_usd, event.success)
        try:
            if threading.get_ident() == self._thread:
                self.ref.cast_nowait(message)
            else:
                anyio.from_thread.run_sync(self.ref.cast_nowait, message, token=self._token)
        except (ActorError, RuntimeError):
            self.lost += 1

    async def metrics(self) -> StreamingSnapshot:
        return await self.ref.call(GetMetrics())

    async def reset(self) -> None:
        await self.ref.call(Reset())

    async def close(self) -> None:
        if self.ref.alive:
            await self.ref.stop()


async def spawn_actor_feed(runtime: Runtime, experiment: Experiment) -> ActorFeed:
    """Start the experiment's StreamingMetrics actor (registered as
    ``telemetry.metrics.<experiment id>``) and return a feed to it."""
    ref = await runtime.spawn(
        StreamingMetrics(),
        name=f"telemetry.metrics.{experiment.id}",
        mailbox_size=MAILBOX_SIZE,
        overflow="drop_newest",
    )
    return ActorFeed(ref, anyio.lowlevel.current_token())
