"""RemoteMetricsStore: the metric service's client, with an on-disk offline buffer.

Recording: records are checked against the service's naming rules on the caller's thread,
then a `GroupCommitWriter` spools them (`_spool`) and the delivery thread (`_delivery`) sends
them over HTTP (`_http`). Reads wait until what was recorded before them was delivered, then
query the service.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import msgspec

from ._adapter import StoreAdapter, SyncRecorder
from ._delivery import Delivery
from ._errors import InvalidRecord, MetricNotFound, StoreClosed, StoreWriteError
from ._http import ServiceHttp
from ._names import check_metric_name, check_run_id, names_valid
from ._query import Query, check_max_points
from ._record import MetricRecord, MetricSummary
from ._spool import default_buffer_dir, open_spool
from ._wire import decode_latest, decode_page, decode_summary
from ._writer import Chunk, GroupCommitWriter

__all__ = ["RemoteMetricsStore"]

T = TypeVar("T")
_log = logging.getLogger("crucible.metrics.remote")
_PAGE = 10_000


class _SyncRemote(SyncRecorder):
    """`store.sync`: never touches disk or network on the caller's thread."""

    def __init__(self, store: RemoteMetricsStore) -> None:
        self._store = store

    def _validate(self, batch: list[MetricRecord], *, indexed: bool) -> None:
        checked: set[tuple[str, str]] = set()  # a batch repeats a few names: check each once
        for index, record in enumerate(batch):
            names = (record.run_id, record.metric)
            if names in checked:
                continue
            try:
                check_run_id(record.run_id)
                check_metric_name(record.metric)
            except InvalidRecord as error:
                if not indexed:
                    raise
                raise error.at_index(index) from None
            checked.add(names)

    def _submit(self, batch: list[MetricRecord], idempotency_key: str | None) -> int:
        if batch:
            self._store._check_open()
            self._store._writer.enqueue(Chunk(batch, idempotency_key))
        return 0

    def flush(self) -> None:
        """Block until everything recorded so far reached the server, or is durable in the
        offline buffer while the server is away."""
        self._store._check_open()
        self._store._deliver(self._store._writer.enqueued)

    def close(self) -> None:
        self._store._close_blocking()


class RemoteMetricsStore(StoreAdapter):
    """A MetricsStore that records into, and reads from, the metric service over HTTP.

    Records are validated on the caller's thread (with the service's naming rules), then a
    background thread writes them to an on-disk buffer and sends them in batches of at most
    `batch_size` per run, each with an idempotency key. While the server is away records
    wait in the buffer; they are sent in order, exactly once, when it returns, even by a
    later process (the buffer is a directory keyed by the URL, `buffer_dir` to choose).
    Recording never blocks and never raises because of the server; reads raise
    `ServiceUnavailable` when it cannot be reached.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        buffer_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 1000,
        flush_interval: float = 0.2,
        timeout: float = 10.0,
        retry_max: float = 5.0,
        close_timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get("CRUCIBLE_TOKEN")
        self._http = ServiceHttp(self.url, token, timeout)
        self._close_timeout = close_timeout
        base = Path(buffer_dir) if buffer_dir is not None else default_buffer_dir(self.url)
        self._spool = open_spool(base, batch_size=batch_size)
        self.buffer_dir = self._spool.directory
        self._closed = False
        self._writer = GroupCommitWriter(
            self._spool,
            flush_interval=flush_interval,
            max_batch=batch_size,
            name="crucible-remote-spool",
        )
        self._delivery = Delivery(self._spool, self._http.post_batch, retry_max=retry_max)
        self._sync: _SyncRemote = _SyncRemote(self)

    # -- delivery ---------------------------------------------------------------------------

    def _deliver(self, ticket: int, timeout: float | None = None) -> bool:
        """Block until records up to `ticket`, and whatever an earlier process left in the
        spool, reached the server (True), or a delivery attempt after this call failed once
        they were durable in the spool (False)."""
        failures = self._delivery.failures
        self._writer.wait(ticket, durable=True)
        return self._delivery.wait(ticket, failures, timeout)

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Wait until what was recorded so far was delivered (or buffered while the server
        is away), then run a blocking request in a worker thread."""
        self._check_open()
        ticket = self._writer.enqueued
        if not self._delivery.done(ticket):
            await anyio.to_thread.run_sync(
                functools.partial(self._deliver, ticket), abandon_on_cancel=True
            )
        return await anyio.to_thread.run_sync(functools.partial(fn, *args))

    # -- state ------------------------------------------------------------------------------

    @property
    def sync(self) -> _SyncRemote:
        return self._sync

    @property
    def online(self) -> bool:
        """False while deliveries fail (the records wait in the offline buffer)."""
        return self._delivery.online

    @property
    def buffered(self) -> int:
        """Requests in the offline buffer, not yet acknowledged by the server."""
        return len(self._spool.entries)

    @property
    def rejected(self) -> int:
        """Requests the server refused for good (kept in `buffer_dir/rejected.log`)."""
        return self._delivery.rejected

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the metrics store is closed; open a new one to read or record")

    # -- the MetricsStore protocol ------------------------------------------------------------

    async def flush(self) -> None:
        self._check_open()
        await anyio.to_thread.run_sync(
            functools.partial(self._deliver, self._writer.enqueued), abandon_on_cancel=True
        )

    async def _select(self, query: Query) -> list[MetricRecord]:
        if query.step_max is not None and query.step_max < 0:
            return []
        if not names_valid(query.run_id, query.metric):
            return []
        params: dict[str, Any] = {"limit": _PAGE}
        if query.metric is not None:
            params["metric"] = query.metric
        if query.step_min is not None:
            params["step_min"] = max(0, query.step_min)
        if query.step_max is not None:
            params["step_max"] = query.step_max
        for name, moment in (("since", query.since), ("until", query.until)):
            if moment is not None:
                params[name] = moment.isoformat()
        path = _run_path(query.run_id, "metrics")

        def read() -> list[MetricRecord]:
            records: list[MetricRecord] = []
            while True:
                body = self._http.get(path, {**params, "offset": len(records)})
                if body is None:
                    return records
                points, total = decode_page(body)
                records.extend(points)
                if not points or len(records) >= total:
                    return records

        return await self._blocking(read)

    async def latest(self, run_id: str) -> dict[str, MetricRecord]:
        if not names_valid(run_id):
            return {}

        def latest() -> dict[str, MetricRecord]:
            body = self._http.get(_run_path(run_id, "metrics/latest"))
            return {} if body is None else dict(sorted(decode_latest(body).items()))

        return await self._blocking(latest)

    async def summary(self, run_id: str, metric: str) -> MetricSummary:
        if not names_valid(run_id, metric):
            raise MetricNotFound(run_id, metric)

        def summary() -> MetricSummary:
            body = self._http.get(_run_path(run_id, f"metrics/{metric}/stats"))
            if body is None:
                raise MetricNotFound(run_id, metric)
            return decode_summary(body)

        return await self._blocking(summary)

    async def history(self, run_id: str, metric: str, max_points: int) -> list[MetricRecord]:
        check_max_points(max_points)
        if not names_valid(run_id, metric):
            return []

        def history() -> list[MetricRecord]:
            path = _run_path(run_id, f"metrics/{metric}")
            body = self._http.get(path, {"max_points": max_points})
            return [] if body is None else decode_page(body)[0]

        return await self._blocking(history)

    async def runs(self) -> list[str]:
        def runs() -> list[str]:
            # Every page of the listing; runs() names the runs that have points.
            found: list[str] = []
            params: dict[str, Any] = {"limit": 1000, "sort": "name"}
            while True:
                body = self._http.get("/api/v1/runs", params)
                page = {} if body is None else msgspec.json.decode(body)
                found.extend(r["id"] for r in page.get("runs", ()) if r["metric_count"])
                if not page.get("next_cursor"):
                    return sorted(found)
                params["cursor"] = page["next_cursor"]

        return await self._blocking(runs)

    async def delete_run(self, run_id: str) -> int:
        if not names_valid(run_id):
            return 0

        def delete() -> int:
            body = self._http.delete(_run_path(run_id, ""))
            if body is None:
                return 0
            deleted: int = msgspec.json.decode(body)["deleted"]
            return deleted

        return await self._blocking(delete)

    def _close_blocking(self) -> None:
        """Send what the server takes within `close_timeout`; the rest stays buffered."""
        if self._closed:
            return
        self._closed = True
        try:
            try:
                self._deliver(self._writer.enqueued, self._close_timeout)
            finally:
                self._writer.close()  # spools and syncs whatever is still pending
        except StoreWriteError as error:  # the spool's disk failed: nothing more to do here
            _log.error("metric store closed with records not buffered: %s", error)
        finally:
            self._delivery.stop()
            self._spool.close()
            self._http.close()


def _run_path(run_id: str, rest: str) -> str:
    check_run_id(run_id)  # the rules also keep an id from changing the path
    return f"/api/v1/runs/{run_id}/{rest}".rstrip("/")
