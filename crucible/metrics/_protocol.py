"""The MetricsStore port: what every adapter offers, async first, with a sync facade."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from ._query import StepBounds
from ._record import MetricRecord, MetricSummary

__all__ = ["MetricsStore", "SyncMetrics"]


class SyncMetrics(Protocol):
    """Blocking-free recording for plain (synchronous) training loops: `store.sync`.

    `record`/`record_many` validate on the caller's thread and hand the records to the
    store's writer through a thread-safe buffer; they never wait for disk or network.
    `flush()` blocks until everything recorded before it is durable.
    """

    def record(
        self,
        run_id: str,
        metric: str,
        value: float,
        *,
        step: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
    ) -> MetricRecord: ...

    def record_many(
        self,
        records: Iterable[MetricRecord | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> None: ...

    def flush(self) -> None: ...


@runtime_checkable
class MetricsStore(Protocol):
    """A durable home for metric records. Every adapter passes the same contract tests.

    - `record` stores one value; `record_many` stores a batch atomically (one invalid record
      rejects the whole batch) and at most once per `idempotency_key`.
    - `flush` returns once every record accepted before it is durable.
    - `read` returns records in step order (records without a step last), then time, then
      arrival; `steps` is a `range` or an inclusive `(low, high)` tuple, `since` is
      inclusive and `until` exclusive.
    - `latest` maps each metric of a run to its last record in that order.
    - `summary` raises `MetricNotFound` when the metric has no record.
    - `history` downsamples to at most `max_points`, keeping each bucket's min, max and last.
    """

    async def record(
        self,
        run_id: str,
        metric: str,
        value: float,
        *,
        step: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
    ) -> MetricRecord: ...

    async def record_many(
        self,
        records: Iterable[MetricRecord | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> None: ...

    async def flush(self) -> None: ...

    async def read(
        self,
        run_id: str,
        *,
        metric: str | None = None,
        steps: StepBounds | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[MetricRecord]: ...

    async def latest(self, run_id: str) -> dict[str, MetricRecord]: ...

    async def summary(self, run_id: str, metric: str) -> MetricSummary: ...

    async def history(self, run_id: str, metric: str, max_points: int) -> list[MetricRecord]: ...

    async def runs(self) -> list[str]: ...

    async def delete_run(self, run_id: str) -> int: ...

    async def close(self) -> None: ...

    @property
    def sync(self) -> SyncMetrics: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
