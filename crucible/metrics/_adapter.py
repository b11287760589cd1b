"""What every adapter shares: recording through `store.sync`, and reads over one `Query`.

`SyncRecorder` builds and validates records on the caller's thread and hands them to the
store's `_submit`, which never waits on I/O; `_settle` is where a durable store waits. The
async `StoreAdapter.record`/`record_many` run the same steps and wait in `_settle` without
blocking the event loop. Reads build one `Query`; `summary`, `history` and `latest` default to
the shared list functions over `read`, and the SQL and remote stores override them with
their server-side forms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import anyio.to_thread

from ._query import Query, StepBounds, downsample, latest_by_metric, summarize
from ._record import MetricRecord, MetricSummary, coerce_batch, utc_now

__all__ = ["StoreAdapter", "SyncRecorder", "make_record"]


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
    """The recording half of every store's `store.sync`."""

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
        record, ticket = self._accept_one(run_id, metric, value, step, metadata, timestamp)
        self._settle(ticket)
        return record

    def record_many(
        self,
        records: Iterable[MetricRecord | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> None:
        self._settle(self._accept_many(records, idempotency_key))

    def _accept_one(
        self,
        run_id: str,
        metric: str,
        value: float,
        step: int | None,
        metadata: Mapping[str, Any] | None,
        timestamp: datetime | None,
    ) -> tuple[MetricRecord, int]:
        record = make_record(run_id, metric, value, step, metadata, timestamp)
        self._validate([record], indexed=False)
        return record, self._submit([record], None)

    def _accept_many(
        self, records: Iterable[MetricRecord | Mapping[str, Any]], idempotency_key: str | None
    ) -> int:
        batch = coerce_batch(records)
        self._validate(batch, indexed=True)
        return self._submit(batch, idempotency_key)

    def _validate(self, batch: list[MetricRecord], *, indexed: bool) -> None:
        """Checks beyond MetricRecord's own (`indexed`: name the record's batch index)."""

    def _submit(self, batch: list[MetricRecord], idempotency_key: str | None) -> int:
        """Hand the batch over without waiting on I/O; return a ticket for `_settle` (0:
        nothing to wait for)."""
        raise NotImplementedError

    def _settle(self, ticket: int) -> None:
        """Block until the records up to `ticket` are as safe as the store promises."""


class StoreAdapter:
    """The MetricsStore protocol's shared half; subclasses set `_sync` and `_select`."""

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
        record, ticket = self._sync._accept_one(run_id, metric, value, step, metadata, timestamp)
        await self._settle(ticket)
        return record

    async def record_many(
        self,
        records: Iterable[MetricRecord | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> None:
        await self._settle(self._sync._accept_many(records, idempotency_key))

    async def _settle(self, ticket: int) -> None:
        """`SyncRecorder._settle` for async callers: must not block the event loop."""

    async def read(
        self,
        run_id: str,
        *,
        metric: str | None = None,
        steps: StepBounds | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[MetricRecord]:
        query = Query.build(run_id, metric=metric, steps=steps, since=since, until=until)
        self._check_open()
        if query.empty:
            return []
        return await self._select(query)

    async def _select(self, query: Query) -> list[MetricRecord]:
        """The records matching a non-empty `query`, in read order."""
        raise NotImplementedError

    async def latest(self, run_id: str) -> dict[str, MetricRecord]:
        return latest_by_metric(await self.read(run_id))

    async def summary(self, run_id: str, metric: str) -> MetricSummary:
        return summarize(run_id, metric, await self.read(run_id, metric=metric))

    async def history(self, run_id: str, metric: str, max_points: int) -> list[MetricRecord]:
        return downsample(await self.read(run_id, metric=metric), max_points)

    def _check_open(self) -> None:
        """Raise `StoreClosed` once the store is closed."""
        raise NotImplementedError

    async def close(self) -> None:
        """Deliver or write what is buffered, then release files and connections."""
        await anyio.to_thread.run_sync(self._close_blocking)

    def _close_blocking(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
