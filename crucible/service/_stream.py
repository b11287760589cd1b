"""Live fan-out of ingested points to WebSocket subscribers, never blocking ingest.

Each subscriber owns a bounded in-memory queue. `publish` puts a message in every queue
without waiting; a subscriber whose queue is full is too slow to keep up, so its queue is
closed and the subscriber marked `dropped`: its WebSocket is then closed with
`SLOW_CONSUMER_CLOSE_CODE`, and the others, and ingest, are not held back.
"""

from __future__ import annotations

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["SLOW_CONSUMER_CLOSE_CODE", "Broadcaster", "Subscription"]

SLOW_CONSUMER_CLOSE_CODE = 4008


@attrs.define(eq=False)
class Subscription:
    run_id: str
    _send: MemoryObjectSendStream[bytes]
    receive: MemoryObjectReceiveStream[bytes]
    dropped: bool = False


class Broadcaster:
    def __init__(self, queue_size: int = 256) -> None:
        self.queue_size = queue_size
        self._subscribers: dict[str, set[Subscription]] = {}
        self.dropped_total = 0

    def has_subscribers(self, run_id: str) -> bool:
        return bool(self._subscribers.get(run_id))

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    def subscribe(self, run_id: str) -> Subscription:
        send, receive = anyio.create_memory_object_stream[bytes](self.queue_size)
        subscription = Subscription(run_id, send, receive)
        self._subscribers.setdefault(run_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subs = self._subscribers.get(subscription.run_id)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del self._subscribers[subscription.run_id]
        subscription._send.close()

    def publish(self, run_id: str, message: bytes) -> None:
        """Queue `message` for every subscriber of `run_id`; never waits."""
        for subscription in list(self._subscribers.get(run_id, ())):
            try:
                subscription._send.send_nowait(message)
            except anyio.WouldBlock:
                subscription.dropped = True
                self.dropped_total += 1
                self.unsubscribe(subscription)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.unsubscribe(subscription)
