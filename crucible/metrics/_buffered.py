"""The recording half shared by the persistent stores: validate, buffer, group-commit."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio.to_thread

from ._errors import StoreClosed
from ._record import MetricRecord, coerce_batch, utc_now
from ._writer import BatchSink, Chunk, GroupCommitWriter

__all__ = ["BufferedStore", "SyncFacade", "make_record"]

T = TypeVar("T")


def make_record(
    run_id: str,
    metric: str,
    value: float,
    step: int | None,
    metadata: Mapping[str, Any] | None,
    timestamp: datetime | None,
) -> MetricRecord:
    if metadata is None:
        metadata = {}
    elif isinstance(metadata, Mapping) and not isinstance(metadata, dict):
        metadata = dict(metadata)  # anything else reaches validation as it is, and is refused
    return MetricRecord(
        run_id, metric, value, step, utc_now() if timestamp is None else timestamp, metadata
    )


class SyncRecorder:
    """The recording half of every store's ``store.sync``: records are built and validated on
    the caller's thread, then handed to the store's own ``_submit`` (which never does I/O
    there unless the store is ``durable``)."""

    def record(
        self,
        run_id: str,
        metric: str,
        value: float,
        *,
        step: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
    ) -> MetricRecord:
        record = make_record(run_id, metric, value, step, metadata, timestamp)
        self._validate([record], indexed=False)
        self._submit([record], None)
        return record

    def record_many(
        self,
        records: Iterable[MetricRecord | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> None:
        batch = coerce_batch(records)
        self._validate(batch, indexed=True)
        self._submit(batch, idempotency_key)

    def _validate(self, batch: list[MetricRecord], *, indexed: bool) -> None:
        """Checks beyond MetricRecord's own (``indexed``: name the record's batch index)."""

    def _submit(self, batch: list[MetricRecord], idempotency_key: str | None) -> None:
        raise NotImplementedError


class RecordsThroughSync:
    """``record`` / ``record_many`` for stores whose ``store.sync`` never waits on I/O (memory,
    remote): the async forms are the sync ones."""

    _sync: SyncRecorder

    async def record(
        self,
        run_id: str,
        metric: str,
        value: float,
        *,
        step: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
    ) -> MetricRecord:
        return self._sync.record(
            run_id, metric, value, step=step, metadata=metadata, timestamp=timestamp
        )

    async def record_many(
        self,
        records: Iterable[MetricRecord | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> None:
        self._sync.record_many(records, idempotency_key=idempotency_key)


class SyncFacade(SyncRecorder):
    """`store.sync`: record from a synchronous training loop without touching disk."""

    def __init__(self, store: BufferedStore) -> None:
        self._store = store

    def _submit(self, batch: list[MetricRecord], idempotency_key: str | None) -> None:
        if not batch:
            return
        ticket = self._store._enqueue(Chunk(batch, idempotency_key))
        if self._store.durable:
            self._store._writer.wait(ticket, durable=True)

    def flush(self) -> None:
        """Block until everything recorded so far is durable."""
        self._store._check_open()
        self._store._writer.wait(self._store._writer.enqueued, durable=True)

    def close(self) -> None:
        """Flush, stop the writer and release the store, from synchronous code."""
        self._store._close_blocking()


class BufferedStore:
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
        self._sync = SyncFacade(self)

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

    async def record(
        self,
        run_id: str,
        metric: str,
        value: float,
        *,
        step: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
    ) -> MetricRecord:
        record = make_record(run_id, metric, value, step, metadata, timestamp)
        ticket = self._enqueue(Chunk([record]))
        if self.durable:
            await self._wait(ticket, durable=True)
        return record

    async def record_many(
        self,
        records: Iterable[MetricRecord | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> None:
        batch = coerce_batch(records)
        if not batch:
            return
        ticket = self._enqueue(Chunk(batch, idempotency_key))
        if self.durable:
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

    async def close(self) -> None:
        """Write and sync everything buffered, then release files and connections."""
        await anyio.to_thread.run_sync(self._close_blocking)

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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
