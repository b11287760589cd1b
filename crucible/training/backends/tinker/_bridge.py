"""The bridge from the Tinker SDK's futures to Crucible's results.

The SDK runs all its work on its own thread and asyncio loop; each plain method returns an
``APIFuture`` whose ``concurrent.futures.Future`` this module chains into a result future of
ours, converting errors to Crucible's types on the way. Awaiting that result (a
``BackendFuture``) blocks neither the caller's loop nor a thread.

Nothing here ever cancels an SDK future on behalf of a waiter: cancelling a training future
that is still queued wedges its TrainingClient for good (its seq_id is never sent, so every
later request waits forever). If one is cancelled anyway, the bridge fails everything pending.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from crucible.training.backends.tinker._errors import NAMED_ERRORS, crucible_error
from crucible.training.port import STATE_OPERATIONS, BackendCrashed

T = TypeVar("T")
U = TypeVar("U")


def in_sdk_context(call: Callable[..., T], *args: Any) -> T:
    """Call into the SDK from an empty context: the SDK's loop runs its tasks in a copy of
    the caller's context, and trio's marker in it (sniffio) would make httpx, on the SDK's
    asyncio loop, believe it runs under trio."""
    return contextvars.Context().run(call, *args)


def in_background(work: Callable[[], None]) -> None:
    """Run blocking SDK setup (building the session retries for minutes when the service is
    down) on a daemon thread, so that it never holds up the event loop or interpreter exit."""
    threading.Thread(target=work, name="crucible-tinker-setup", daemon=True).start()


def settle(target: concurrent.futures.Future[Any], value: Any, error: BaseException | None) -> None:
    try:
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass  # already failed by SdkBridge.wedge


def chain(source: concurrent.futures.Future[Any], target: concurrent.futures.Future[Any]) -> None:
    """Settle ``target`` as ``source`` settles."""

    def copy(finished: concurrent.futures.Future[Any]) -> None:
        error = finished.exception()
        settle(target, None if error else finished.result(), error)

    source.add_done_callback(copy)


def when_all_done(
    futures: Sequence[concurrent.futures.Future[Any]], then: Callable[[], None]
) -> None:
    """Call ``then`` once (on whichever thread finishes last) after every future is done."""
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_future: concurrent.futures.Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            then()

    for future in futures:
        future.add_done_callback(one_done)


class SdkBridge:
    """The SDK futures a backend waits on, and whether its TrainingClient can still be trusted.

    A state-changing operation that failed (other than a refused request) loses the client:
    nobody knows its state. A cancelled SDK future wedges it. Either way every later submission
    raises BackendCrashed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _pending, touched from the SDK's thread
        # Each pending result (target) and the SDK future it waits on (source).
        self._pending: dict[concurrent.futures.Future[Any], concurrent.futures.Future[Any]] = {}
        self._lost: str | None = None
        self._wedged: str | None = None

    @property
    def lost(self) -> bool:
        return self._lost is not None or self._wedged is not None

    def crashed(self) -> BackendCrashed:
        why = self._wedged or self._lost
        return BackendCrashed(
            f"the Tinker TrainingClient is unusable ({why}); build a new backend from the last "
            "checkpoint and replay"
        )

    def bridge(
        self,
        op: str,
        source: concurrent.futures.Future[T],
        convert: Callable[[T], U] | None = None,
    ) -> concurrent.futures.Future[U]:
        """A future that completes with ``source``'s result (converted) or a Crucible error.

        Cancelling the returned future does nothing to ``source``; if ``source`` itself is
        ever cancelled, the TrainingClient is wedged and every pending operation fails."""
        target: concurrent.futures.Future[U] = concurrent.futures.Future()
        with self._lock:
            self._pending[target] = source

        def done(finished: concurrent.futures.Future[T]) -> None:
            with self._lock:
                self._pending.pop(target, None)
            if finished.cancelled():
                self.wedge(f"a queued {op} request was cancelled")
                return
            failure = finished.exception()
            if failure is not None:
                error = crucible_error(op, failure)
                if op in STATE_OPERATIONS and not isinstance(error, NAMED_ERRORS):
                    self._lost = self._lost or str(error)
                settle(target, None, error)
                return
            try:
                value: Any = finished.result()
                settle(target, convert(value) if convert is not None else value, None)
            except Exception as error:
                settle(target, None, crucible_error(op, error))

        source.add_done_callback(done)
        return target

    def wedge(self, reason: str) -> None:
        self._wedged = self._wedged or reason
        with self._lock:
            pending, self._pending = list(self._pending), {}
        for future in pending:
            settle(future, None, self.crashed())

    def pending_results(self) -> list[concurrent.futures.Future[Any]]:
        with self._lock:
            return list(self._pending)

    def abandon(self) -> None:
        """Cancel the SDK futures still pending (only for a client nobody will use again)."""
        with self._lock:
            abandoned = list(self._pending.values())
        for source in abandoned:
            source.cancel()
