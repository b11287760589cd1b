"""The remote store's delivery thread: sends the spool's requests to the service, in order.

The group-commit writer fills the spool; this thread empties it. While the service is away
it backs off (doubling up to `retry_max`), and a waiter makes it try again at once. A request
the service refuses for good is set aside in `rejected.log`, so one bad request never stops
every later one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ._spool import Spool, SpoolEntry

__all__ = ["Delivery", "Rejected"]

_log = logging.getLogger("crucible.metrics.remote")


class Rejected(Exception):
    """The server refused a request for good (4xx other than 408/429)."""


class Delivery:
    """Owns the delivery thread; `sent` counts the writer tickets the server acknowledged."""

    def __init__(
        self, spool: Spool, post: Callable[[str, bytes], None], *, retry_max: float
    ) -> None:
        self._spool = spool
        self._post = post
        self._retry_max = retry_max
        self._cond = spool.changed
        self.sent = 0  # tickets acknowledged by the server
        self.failures = 0  # failed delivery attempts so far
        self.rejected = 0  # requests the server refused for good
        self.last_error: BaseException | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="crucible-remote-delivery", daemon=True
        )
        self._thread.start()

    @property
    def online(self) -> bool:
        return self._backoff == 0.0

    def done(self, ticket: int) -> bool:
        """Whether records up to `ticket`, and what an earlier process left, were delivered."""
        return self.sent >= ticket and not self._spool.backlog

    def wait(self, ticket: int, failures: int, timeout: float | None = None) -> bool:
        """Block until records up to `ticket` (and an earlier process's leftovers) reached
        the server (True), or an attempt failed after `failures` attempts had (False: they
        wait in the spool), or `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._retry_at = 0.0  # someone is waiting: try now, not after the backoff
            self._cond.notify_all()
            while not self.done(ticket):
                if self.failures > failures or not self._thread.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def stop(self) -> None:
        """Stop after the request in flight; what is not sent stays in the spool."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not (
                    self._spool.entries and time.monotonic() >= self._retry_at
                ):
                    delay = self._retry_at - time.monotonic() if self._spool.entries else None
                    self._cond.wait(delay)
                if self._stopping:
                    return
                entry = self._spool.entries[0]
            try:
                self._deliver(entry)
            except Exception as error:  # e.g. the spool's disk is full: keep going, later
                _log.exception("metric delivery: %s", error)
                self._failed(error)

    def _deliver(self, entry: SpoolEntry) -> None:
        try:
            self._post(entry.key, entry.body)
        except Rejected as error:
            self._set_aside(entry, error)
        except Exception as error:  # server away or failing: back off, keep the spool
            self._failed(error)
        else:
            self._acked(entry)

    def _acked(self, entry: SpoolEntry) -> None:
        with self._cond:
            self._spool.ack()
            self._backoff = 0.0
            self._advance(entry)

    def _advance(self, entry: SpoolEntry) -> None:
        if entry.ticket:
            self.sent = max(self.sent, entry.ticket)
        if not self._spool.entries:
            self.sent = self._spool.accepted
        self._cond.notify_all()

    def _failed(self, error: BaseException) -> None:
        with self._cond:
            self.failures += 1
            self.last_error = error
            self._backoff = min(self._retry_max, max(0.05, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff
            self._cond.notify_all()

    def _set_aside(self, entry: SpoolEntry, error: Rejected) -> None:
        with open(self._spool.directory / "rejected.log", "ab") as dead:
            dead.write(f"{error}\t".encode() + entry.key.encode() + b"\t" + entry.body + b"\n")
        _log.warning("metric service refused a batch (kept in rejected.log): %s", error)
        with self._cond:
            self.rejected += 1
            self.last_error = error
            self._spool.ack()
            self._advance(entry)
