"""The recording half shared by the persistent stores: buffer, then group-commit."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

from ._adapter import StoreAdapter, SyncRecorder
from ._errors import StoreClosed
from ._record import MetricRecord
from ._writer import BatchSink, Chunk, GroupCommitWriter

__all__ = ["BufferedStore", "SyncFacade"]

T = TypeVar("T")


class SyncFacade(SyncRecorder):
    """`store.sync`: record from a synchronous training loop without touching disk."""

    def __init__(self, store: BufferedStore) -> None:
        self._store = store

    def _submit(self, batch: list[MetricRecord], idempotency_key: str | None) -> int:
        if not batch:
            return 0
        return self._store._enqueue(Chunk(batch, idempotency_key))

    def _settle(self, ticket: int) -> None:
        if ticket and self._store.durable:
            self._store._writer.wait(ticket, durable=True)

    def flush(self) -> None:
        """Block until everything recorded so far is durable."""
        self._store._check_open()
        self._store._writer.wait(self._store._writer.enqueued, durable=True)

    def close(self) -> None:
        """Flush, stop the writer and release the store, from synchronous code."""
        self._store._close_blocking()


class BufferedStore(StoreAdapter):
    """Recording through a `GroupCommitWriter`; subclasses add the sink and the queries.

    With `durable=True` every `record`/`record_many` returns only once its records are
    durable; concurrent callers share one sync (group commit). Otherwise records become
    durable within `flush_interval` seconds, or at `flush()`/`close()`.
    """

    def __init__(
        self,
        sink: BatchSink,
        *,
        durable: bool,
        flush_interval: float,
        max_batch: int,
        name: str,
    ) -> None:
        self.durable = durable
        self._closed = False
        self._writer = GroupCommitWriter(
            sink, flush_interval=flush_interval, max_batch=max_batch, name=name
        )
        self._sync: SyncFacade = SyncFacade(self)

    @property
    def sync(self) -> SyncFacade:
        return self._sync

    def _enqueue(self, chunk: Chunk) -> int:
        if self._closed:
            raise StoreClosed("the metrics store is closed; open a new one to record")
        return self._writer.enqueue(chunk)

    async def _wait(self, ticket: int, *, durable: bool) -> None:
        if not durable and self._writer.is_written(ticket):
            return
        # Abandoning on cancel is safe: waiting has no side effect.
        await anyio.to_thread.run_sync(
            functools.partial(self._writer.wait, ticket, durable=durable),
            abandon_on_cancel=True,
        )

    async def _settle(self, ticket: int) -> None:
        if ticket and self.durable:
            await self._wait(ticket, durable=True)

    async def flush(self) -> None:
        self._check_open()
        await self._wait(self._writer.enqueued, durable=True)

    async def _query(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking query in a worker thread once every accepted record is written."""
        self._check_open()
        await self._wait(self._writer.enqueued, durable=False)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args))

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the metrics store is closed; open a new one to read or record")

    def _close_blocking(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        finally:
            self._release()

    def _release(self) -> None:
        """Close files and connections (runs after the writer stopped)."""
