"""Group commit: one background thread drains a thread-safe buffer into a sink in batches.

Producers (async tasks, the sync facade, other threads) only append to a list under a lock,
so recording never waits for disk or network. The writer thread wakes when the buffer holds
`max_batch` records, when someone waits for durability, or every `flush_interval` seconds,
writes everything buffered in one `sink.write` call, and makes it durable with `sink.sync`
when asked or when `flush_interval` has passed since the last sync. Everyone waiting for
durability while one sync runs is served by the next one: that is the group commit.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref
from typing import Protocol

import attrs

from ._errors import StoreClosed, StoreWriteError
from ._record import MetricRecord

__all__ = ["BatchSink", "Chunk", "GroupCommitWriter"]


@attrs.frozen
class Chunk:
    """Records accepted by one call, stored together (atomically when keyed)."""

    records: list[MetricRecord]
    idempotency_key: str | None = None
    # A run request for the remote store's spool instead of records: ("PATCH /api/...", body).
    request: tuple[str, bytes] | None = None


class BatchSink(Protocol):
    def write(self, chunks: list[Chunk]) -> None:
        """Persist `chunks` in order; a keyed chunk whose key is already stored is skipped."""

    def sync(self) -> None:
        """Make everything written so far durable."""


# Writers still open when the interpreter exits are flushed then, so a script that forgets
# close() loses nothing buffered (their threads are daemons and would simply vanish).
_open_writers: weakref.WeakSet[GroupCommitWriter] = weakref.WeakSet()


@atexit.register
def _close_open_writers() -> None:
    for writer in list(_open_writers):
        with contextlib.suppress(Exception):
            writer.close()


class GroupCommitWriter:
    """Owns the writer thread; `enqueue` returns a ticket to `wait` on."""

    def __init__(
        self, sink: BatchSink, *, flush_interval: float, max_batch: int, name: str
    ) -> None:
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval!r}")
        self._sink = sink
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[tuple[int, Chunk]] = []  # (ticket, chunk), in arrival order
        self._pending_records = 0
        self._enqueued = 0  # tickets: records accepted so far
        self._written = 0  # tickets handed to sink.write
        self._durable = 0  # tickets made durable by sink.sync
        self._sync_wanted = 0  # the highest ticket someone waits to see durable
        self._write_wanted = 0  # the highest ticket someone waits to see written (a read)
        self._error: BaseException | None = None
        self._failures = 0  # failed write attempts so far; waiters watch it grow
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        _open_writers.add(self)

    @property
    def enqueued(self) -> int:
        return self._enqueued

    def enqueue(self, chunk: Chunk) -> int:
        """Buffer a chunk for the writer; return its ticket. Never blocks on I/O."""
        with self._cond:
            if self._closing:
                raise StoreClosed("the metrics store is closed; open a new one to record")
            self._enqueued += max(1, len(chunk.records))
            self._pending.append((self._enqueued, chunk))
            self._pending_records += len(chunk.records)
            if self._pending_records >= self._max_batch:
                self._cond.notify_all()
            return self._enqueued

    def is_written(self, ticket: int) -> bool:
        return self._written >= ticket

    def wait(self, ticket: int, *, durable: bool) -> None:
        """Block until the chunk with `ticket` (and all before it) is written, or durable.

        Raises `StoreWriteError` if a write attempt fails while waiting (the records stay
        buffered and the writer retries every `flush_interval`; wait again to see the next
        attempt's outcome).
        """
        with self._cond:
            failures = self._failures
            if durable and self._sync_wanted < ticket:
                self._sync_wanted = ticket
                self._cond.notify_all()
            elif not durable and self._write_wanted < ticket:
                self._write_wanted = ticket
                self._cond.notify_all()
            while (self._durable if durable else self._written) < ticket:
                if self._failures > failures and self._error is not None:
                    raise StoreWriteError(f"metrics writer failed: {self._error}") from self._error
                if not self._thread.is_alive():
                    raise StoreClosed("the metrics writer has stopped")
                self._cond.wait()

    def close(self) -> None:
        """Write and sync everything buffered, then stop the thread."""
        _open_writers.discard(self)
        with self._cond:
            self._closing = True
            self._sync_wanted = self._enqueued
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None and self._durable < self._enqueued:
            raise StoreWriteError(
                f"metrics writer failed; {self._enqueued - self._durable} records were not "
                f"stored: {self._error}"
            ) from self._error

    def _run(self) -> None:
        last_sync = time.monotonic()
        while True:
            with self._cond:
                while True:
                    since_sync = time.monotonic() - last_sync
                    unsynced = self._written > self._durable or bool(self._pending)
                    if (
                        self._pending_records >= self._max_batch
                        or self._sync_wanted > self._durable
                        or self._write_wanted > self._written
                        or (self._closing and self._error is None)
                        or (unsynced and since_sync >= self._flush_interval)
                    ):
                        break
                    if self._closing and self._error is not None:
                        return  # close() gave up on a failing sink
                    self._cond.wait(self._flush_interval)
                # At most about max_batch records per write: bounded transactions and
                # memory, and the first records become durable sooner.
                taken = count = 0
                while count < len(self._pending) and taken < self._max_batch:
                    taken += len(self._pending[count][1].records)
                    count += 1
                batch = self._pending[:count]
                del self._pending[:count]
                self._pending_records -= taken
                chunks = [chunk for _, chunk in batch]
                target = batch[-1][0] if batch else self._written
                sync_now = (
                    self._sync_wanted > self._durable
                    or self._closing
                    or time.monotonic() - last_sync >= self._flush_interval
                )
            try:
                if chunks:
                    self._sink.write(chunks)
                with self._cond:
                    self._written = target
                    self._cond.notify_all()
                if sync_now:
                    self._sink.sync()
                    last_sync = time.monotonic()
            except BaseException as error:  # reported to every waiter, then retried
                with self._cond:
                    if self._written < target:
                        self._pending[:0] = batch  # keep order: retry them first
                        self._pending_records += taken
                    self._error = error
                    self._failures += 1
                    self._cond.notify_all()
                    if self._closing:
                        return
                    # Back off before retrying; a waiter is woken by notify_all above.
                    self._cond.wait(self._flush_interval)
                continue
            with self._cond:
                self._error = None
                if sync_now:
                    self._durable = target
                self._cond.notify_all()
                if self._closing and not self._pending:
                    return
