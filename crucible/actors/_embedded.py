"""``embedded()``: the runtime on a background thread, for synchronous trainers.

A torch training loop is usually plain synchronous code. ``embedded()`` runs an event loop on
a daemon thread through an anyio blocking portal and hands back sync twins of the runtime and
its refs; every method is safe to call from any thread other than the loop's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, Literal, TypeVar, overload

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._actor import Actor, Request
from ._children import ChildCounts, ChildInfo, ChildSpec
from ._mailbox import Overflow
from ._reason import ExitReason
from ._ref import DEFAULT_CALL_TIMEOUT, ActorRef
from ._runtime import Runtime, open_runtime
from ._supervisor import SupervisorRef

A = TypeVar("A", bound=Actor[Any])
R = TypeVar("R")
T = TypeVar("T")


class SyncActorRef(Generic[A]):
    """The blocking twin of an ActorRef (same errors, same semantics)."""

    __slots__ = ("_portal", "ref")

    def __init__(self, ref: ActorRef[A], portal: BlockingPortal) -> None:
        self.ref = ref
        self._portal = portal

    def __repr__(self) -> str:
        return f"<SyncActorRef {self.ref!r}>"

    @property
    def alive(self) -> bool:
        return self.ref.alive

    @overload
    def call(self, message: Request[R], timeout: float | None = ...) -> R: ...
    @overload
    def call(self, message: Any, timeout: float | None = ...) -> Any: ...
    def call(self, message: Any, timeout: float | None = DEFAULT_CALL_TIMEOUT) -> Any:
        return self._portal.call(self.ref.call, message, timeout)

    def cast(self, message: Any) -> None:
        """Returns once the message is in the mailbox (under ``block``, once there is room)."""
        self._portal.call(self.ref.cast, message)

    def send_info(self, message: Any) -> None:
        self._portal.call(self.ref.send_info, message)

    def stop(self, timeout: float | None = 5.0) -> ExitReason:
        return self._portal.call(self.ref.stop, timeout)


class SyncSupervisorRef:
    __slots__ = ("_portal", "sup")

    def __init__(self, sup: SupervisorRef, portal: BlockingPortal) -> None:
        self.sup = sup
        self._portal = portal

    def start_child(self, spec: ChildSpec) -> SyncActorRef[Any]:
        return SyncActorRef(self._portal.call(self.sup.start_child, spec), self._portal)

    def terminate_child(self, child_id: str) -> None:
        self._portal.call(self.sup.terminate_child, child_id)

    def restart_child(self, child_id: str) -> SyncActorRef[Any]:
        return SyncActorRef(self._portal.call(self.sup.restart_child, child_id), self._portal)

    def which_children(self) -> list[ChildInfo]:
        return self._portal.call(self.sup.which_children)

    def count_children(self) -> ChildCounts:
        return self._portal.call(self.sup.count_children)


class EmbeddedRuntime:
    """Sync access to a Runtime running on the background thread."""

    __slots__ = ("portal", "runtime")

    def __init__(self, runtime: Runtime, portal: BlockingPortal) -> None:
        self.runtime = runtime
        self.portal = portal

    def spawn(
        self,
        actor: A,
        *,
        name: str | None = None,
        mailbox_size: int | None = None,
        overflow: Overflow | None = None,
        shutdown: float | None = 5.0,
    ) -> SyncActorRef[A]:
        async def spawn() -> ActorRef[A]:
            return await self.runtime.spawn(
                actor, name=name, mailbox_size=mailbox_size, overflow=overflow, shutdown=shutdown
            )

        return SyncActorRef(self.portal.call(spawn), self.portal)

    def supervise(self, *args: Any, name: str | None = None, **kwargs: Any) -> SyncSupervisorRef:
        async def supervise() -> SupervisorRef:
            return await self.runtime.supervise(*args, name=name, **kwargs)

        return SyncSupervisorRef(self.portal.call(supervise), self.portal)

    def whereis(self, name: str) -> SyncActorRef[Any] | None:
        ref = self.portal.call(self.runtime.whereis, name)
        return SyncActorRef(ref, self.portal) if ref is not None else None

    def register(self, name: str, ref: SyncActorRef[Any]) -> None:
        self.portal.call(self.runtime.register, name, ref.ref)

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run an async function on the runtime's loop and return its result."""
        return self.portal.call(fn, *args)


@contextmanager
def embedded(backend: Literal["asyncio", "trio"] = "asyncio") -> Iterator[EmbeddedRuntime]:
    """Run a runtime on a background thread for the duration of the block.

    Leaving the block stops every actor (newest first, each within its shutdown timeout) and
    joins the thread.
    """
    with (
        start_blocking_portal(backend) as portal,
        portal.wrap_async_context_manager(open_runtime()) as runtime,
    ):
        yield EmbeddedRuntime(runtime, portal)
