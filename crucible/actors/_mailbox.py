"""A bounded FIFO mailbox with a per-actor overflow policy.

One consumer (the actor's task) and any number of producers. Casts are appended to a deque and
the consumer is woken only if it is parked, so a cast allocates nothing but its deque slot.
Under the ``block`` policy a producer that finds the mailbox full parks in a FIFO queue and the
consumer hands its message over as soon as a slot frees, so senders keep their order and a
newcomer never overtakes a parked sender.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal, get_args

import anyio

from ._errors import ActorDead, MailboxFull
from ._loop import Slot, slot_factory

Overflow = Literal["block", "drop_newest", "drop_oldest", "fail"]
OVERFLOW_POLICIES: tuple[str, ...] = get_args(Overflow)


class Call:
    """A request waiting for its reply. Each call owns its own reply slot, so a reply can only
    ever reach the caller that asked for it (a late reply to a timed-out call is dropped)."""

    __slots__ = ("message", "slot")

    def __init__(self, message: Any, slot: Slot) -> None:
        self.message = message
        self.slot = slot

    def resolve(self, result: Any) -> None:
        self.slot.resolve(result)

    def fail(self, error: BaseException) -> None:
        self.slot.fail(error)


class _ParkedSender:
    __slots__ = ("accepted", "error", "item")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.accepted = anyio.Event()
        self.error: BaseException | None = None


class Mailbox:
    __slots__ = (
        "_consumer",
        "closed",
        "dropped",
        "items",
        "maxsize",
        "new_slot",
        "owner",
        "parked",
        "policy",
    )

    def __init__(self, owner: str, maxsize: int, policy: Overflow) -> None:
        if maxsize < 1:
            raise ValueError(f"{owner}: mailbox maxsize must be >= 1, got {maxsize}")
        if policy not in OVERFLOW_POLICIES:
            raise ValueError(
                f"{owner}: unknown overflow policy {policy!r}; choose one of {OVERFLOW_POLICIES}"
            )
        self.owner = owner
        self.maxsize = maxsize
        self.policy: Overflow = policy
        self.items: deque[Any] = deque()
        self.dropped = 0
        self.closed: str | None = None  # why the mailbox refuses messages, once the actor stops
        self._consumer: Slot | None = None
        self.parked: deque[_ParkedSender] = deque()
        self.new_slot = slot_factory()

    # -- producers ---------------------------------------------------------------------------

    def put_nowait(self, item: Any) -> None:
        """Enqueue without waiting. Under ``block`` a full mailbox raises MailboxFull (use
        ``put`` to wait for room instead)."""
        if self.closed is not None:
            raise ActorDead(self.closed)
        items = self.items
        if len(items) >= self.maxsize:
            self._overflow(item)
            return
        items.append(item)
        consumer = self._consumer
        if consumer is not None:
            self._consumer = None
            consumer.resolve(None)

    def must_wait(self) -> bool:
        """Would ``put`` have to wait for room (``block`` policy, mailbox full)?"""
        return self.policy == "block" and (len(self.items) >= self.maxsize or bool(self.parked))

    async def put(self, item: Any) -> None:
        """Enqueue, waiting for room under the ``block`` policy (back-pressure)."""
        if not self.must_wait():
            self.put_nowait(item)
            return
        if self.closed is not None:
            raise ActorDead(self.closed)
        parked = _ParkedSender(item)
        self.parked.append(parked)
        try:
            await parked.accepted.wait()
        except BaseException:
            # Cancelled or timed out while parked: withdraw the message unless it was
            # already handed over (then it counts as sent).
            if not parked.accepted.is_set():
                self.parked.remove(parked)
            raise
        if parked.error is not None:
            raise parked.error

    def put_system(self, item: Any) -> None:
        """Enqueue ignoring the bound: runtime notices (a child's exit, a timer) must not be
        dropped or block the runtime."""
        if self.closed is not None:
            return
        self.items.append(item)
        consumer = self._consumer
        if consumer is not None:
            self._consumer = None
            consumer.resolve(None)

    def _overflow(self, item: Any) -> None:
        policy = self.policy
        if policy == "drop_oldest":
            oldest = self.items.popleft()
            self.dropped += 1
            if type(oldest) is Call:
                oldest.fail(
                    MailboxFull(f"{self.owner}: request dropped (mailbox full, drop_oldest)")
                )
            self.items.append(item)
            return
        if policy == "drop_newest" and type(item) is not Call:
            self.dropped += 1
            return
        # fail, block (from put_nowait), and a call under drop_newest: the sender must hear
        # about it, a call can never be dropped silently or its caller would wait forever.
        self.dropped += 1
        raise MailboxFull(
            f"{self.owner}: mailbox full ({self.maxsize} messages, policy {policy!r})"
        )

    # -- the consumer ------------------------------------------------------------------------

    def take(self) -> Any:
        """Pop the oldest message (the mailbox must not be empty) and admit a parked sender."""
        item = self.items.popleft()
        if self.parked:
            self.admit_parked()
        return item

    def admit_parked(self) -> None:
        """A slot freed up: the longest-parked sender's message goes in, in its turn."""
        parked = self.parked.popleft()
        self.items.append(parked.item)
        parked.accepted.set()

    async def wait(self) -> None:
        """Park the consumer until a message arrives or ``wake`` is called."""
        if self.items:
            return
        slot = self._consumer = self.new_slot()
        try:
            await slot
        finally:
            self._consumer = None

    def wake(self) -> None:
        consumer = self._consumer
        if consumer is not None:
            self._consumer = None
            consumer.resolve(None)

    def close(self, why: str) -> list[Any]:
        """Refuse further messages (senders get ActorDead(why)) and return what was still
        queued. A parked call counts as sent (its caller then waits for the answer the
        owner gives every returned call); a parked cast is refused with ActorDead."""
        self.closed = why
        pending = list(self.items)
        self.items.clear()
        while self.parked:
            parked = self.parked.popleft()
            pending.append(parked.item)
            if type(parked.item) is not Call:
                parked.error = ActorDead(why)
            parked.accepted.set()
        return pending
