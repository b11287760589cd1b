"""RemoteMetricsStore: the metric service's client, with an on-disk offline buffer.

Also the service's naming rules (`check_run_id`, `check_metric_name`): the server enforces
them and the client applies them before buffering, so a record the server would refuse is
refused at `record()` time instead of after a round trip.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio.to_thread
import attrs
import msgspec

from ._buffered import RecordsThroughSync, SyncRecorder
from ._errors import InvalidRecord, MetricNotFound, MetricsError, StoreClosed
from ._query import Query, StepBounds, check_max_points
from ._record import MetricRecord, MetricSummary

if TYPE_CHECKING:
    import httpx

__all__ = ["RemoteMetricsStore", "ServiceUnavailable", "check_metric_name", "check_run_id"]

T = TypeVar("T")
_log = logging.getLogger("crucible.metrics.remote")

# Run ids name a path segment: letters, digits and . _ - : (no slash, no leading dot).
_RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}")
# Metric names may be grouped with slashes ("train/loss"), one non-empty segment at a time.
_METRIC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]*(/[A-Za-z0-9_][A-Za-z0-9_.:\-]*)*")
_METRIC_MAX = 200
# These suffixes name other routes under /runs/{id}/metrics/, so no metric may take them.
_RESERVED_METRIC = ("latest",)
_RESERVED_SUFFIX = "/stats"


def check_run_id(run_id: object) -> str:
    """`run_id` if the service accepts it, else `InvalidRecord` naming the rule."""
    if type(run_id) is not str or not _RUN_ID.fullmatch(run_id):
        raise InvalidRecord(
            "run_id",
            f"must be 1-128 letters, digits or . _ - : not starting with . - or :, got {run_id!r}"[
                :200
            ],
        )
    return run_id


def check_metric_name(metric: object) -> str:
    """`metric` if the service accepts it, else `InvalidRecord` naming the rule."""
    if (
        type(metric) is not str
        or len(metric) > _METRIC_MAX
        or not _METRIC.fullmatch(metric)
        or metric in _RESERVED_METRIC
        or metric.endswith(_RESERVED_SUFFIX)
    ):
        raise InvalidRecord(
            "metric",
            f"must be 1-{_METRIC_MAX} characters: '/'-separated segments of letters, digits "
            f"or . _ - : (not 'latest', not ending in '/stats'), got {metric!r}"[:240],
        )
    return metric


def _check_names(record: MetricRecord) -> MetricRecord:
    check_run_id(record.run_id)
    check_metric_name(record.metric)
    return record


class ServiceUnavailable(MetricsError, ConnectionError):
    """The metric service could not be reached or failed; the cause is chained.

    Only reads raise it: records are kept in the offline buffer until the service is back.
    """


# -- the wire format of POST /api/v1/metrics/batch --------------------------------------------


class _WirePoint(msgspec.Struct, omit_defaults=True):
    metric: str
    value: float
    step: int | None
    timestamp: datetime
    metadata: dict[str, Any] = {}


class _WireBatch(msgspec.Struct):
    run_id: str
    metrics: list[_WirePoint]


_encode = msgspec.json.encode


def _encode_batches(
    records: list[MetricRecord], key: str | None, batch_size: int
) -> list[tuple[str, bytes]]:
    """(idempotency key, body) per request: one run per request, at most `batch_size` points.

    A caller's key is extended with the part number, so re-sending the same keyed batch
    produces the same keys and the server stores each part once.
    """
    by_run: dict[str, list[_WirePoint]] = {}
    for r in records:
        by_run.setdefault(r.run_id, []).append(
            _WirePoint(r.metric, r.value, r.step, r.timestamp, r.metadata)
        )
    parts: list[tuple[str, bytes]] = []
    for run_id, points in by_run.items():
        for start in range(0, len(points), batch_size):
            body = _encode(_WireBatch(run_id, points[start : start + batch_size]))
            part_key = uuid.uuid4().hex if key is None else f"{key}#{len(parts)}"
            parts.append((part_key, body))
    return parts


# -- the offline buffer -------------------------------------------------------------------------


@attrs.frozen
class _Entry:
    key: str
    body: bytes
    end: int  # file offset just past this entry's line
    ticket: int  # the store's record ticket this entry completes (0: from an earlier process)


class _Spool:
    """Requests not yet acknowledged by the server, in order, in an append-only file.

    `spool.log` holds one `key<TAB>body` line per request; `acked` holds the offset up to
    which the server has acknowledged. A crash between the server's answer and the ack
    write re-sends a request, which its idempotency key makes harmless; a torn last line
    (a crash mid-append) is cut off on open. The file is emptied whenever all is acked.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise
        self._log_path = directory / "spool.log"
        self._fd = os.open(self._log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._ack_fd = os.open(directory / "acked", os.O_RDWR | os.O_CREAT, 0o600)
        self.entries: deque[_Entry] = deque()
        self._recover()

    def _recover(self) -> None:
        acked_text = os.pread(self._ack_fd, 32, 0).strip()
        acked = int(acked_text) if acked_text.isdigit() else 0
        data = self._log_path.read_bytes()
        if acked >= len(data):
            self._reset()
            return
        offset = acked
        while True:
            newline = data.find(b"\n", offset)
            if newline < 0:
                break
            key, tab, body = data[offset:newline].partition(b"\t")
            if tab:
                self.entries.append(_Entry(key.decode(), body, newline + 1, 0))
            offset = newline + 1
        if offset < len(data):  # a torn last line: its request was never sent
            os.truncate(self._log_path, offset)
        self._size = offset
        self._acked = acked

    def _reset(self) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._ack_fd, b"0".ljust(20), 0)
        self._size = 0
        self._acked = 0

    def append(self, parts: list[tuple[str, bytes]], before: int, ticket: int) -> None:
        """Append one call's requests; only the last completes the call's `ticket`."""
        lines = [key.encode() + b"\t" + body + b"\n" for key, body in parts]
        os.write(self._fd, b"".join(lines))
        for index, ((key, body), line) in enumerate(zip(parts, lines, strict=True)):
            self._size += len(line)
            done = ticket if index == len(parts) - 1 else before
            self.entries.append(_Entry(key, body, self._size, done))

    def ack(self) -> _Entry:
        entry = self.entries.popleft()
        if not self.entries:
            self._reset()
        else:
            self._acked = entry.end
            os.pwrite(self._ack_fd, str(entry.end).encode().ljust(20), 0)
        return entry

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        for fd in (self._fd, self._ack_fd, self._lock_fd):
            os.close(fd)


def _open_spool(base: Path) -> _Spool:
    """The spool in `base`, or in `base-2`, `base-3`... when another process holds it."""
    for attempt in range(1, 1000):
        directory = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            return _Spool(directory)
        except BlockingIOError:
            continue
    raise MetricsError(f"no free offline buffer next to {base}")


def default_buffer_dir(url: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache / "crucible" / "remote-buffer" / digest


# -- the sender thread ---------------------------------------------------------------------------


class _Rejected(Exception):
    """The server refused a request for good (4xx other than 408/429)."""


class _Sender:
    """Moves accepted records into the spool and the spool to the server, in order.

    Producers only append to `_pending` under a lock; everything that touches disk or the
    network happens on this thread, so recording never blocks a training loop.
    """

    def __init__(
        self,
        spool: _Spool,
        post: Callable[[str, bytes], None],
        *,
        batch_size: int,
        flush_interval: float,
        retry_max: float,
    ) -> None:
        self._spool = spool
        self._post = post
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._retry_max = retry_max
        self._cond = threading.Condition()
        self._pending: list[tuple[list[MetricRecord], str | None]] = []
        self._pending_records = 0
        self._pending_since = 0.0  # when the oldest pending record was accepted
        self.enqueued = 0  # tickets: records accepted so far
        self.spooled = 0  # tickets written to the spool file
        self.synced = 0  # tickets fsynced in the spool file
        self.sent = 0  # tickets acknowledged by the server
        self.failures = 0  # failed delivery attempts so far
        self.rejected = 0  # requests the server refused for good
        self.last_error: BaseException | None = None
        self._wanted = 0  # the highest ticket a waiter wants delivered
        self._retry_at = 0.0
        self._backoff = 0.0
        self._closing = False
        self._give_up = False
        self._thread = threading.Thread(
            target=self._run, name="crucible-remote-sender", daemon=True
        )
        self._thread.start()

    @property
    def online(self) -> bool:
        return self._backoff == 0.0

    @property
    def buffered(self) -> int:
        """Requests waiting in the spool for the server."""
        return len(self._spool.entries)

    def enqueue(self, records: list[MetricRecord], key: str | None) -> int:
        with self._cond:
            if self._closing:
                raise StoreClosed("the metrics store is closed; open a new one to record")
            if not self._pending:
                self._pending_since = time.monotonic()
                self._cond.notify_all()
            self._pending.append((records, key))
            self._pending_records += len(records)
            self.enqueued += len(records)
            if self._pending_records >= self._batch_size:
                self._cond.notify_all()
            return self.enqueued

    def wait(self, ticket: int, timeout: float | None = None) -> bool:
        """Block until records up to `ticket` reached the server (True), or a delivery
        attempt after this call failed once they were safe on disk (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            failures = self.failures
            if self._wanted < ticket:
                self._wanted = ticket
                self._retry_at = 0.0  # someone is waiting: try now, not after the backoff
                self._cond.notify_all()
            while self.sent < ticket:
                if self.failures > failures and self.synced >= ticket:
                    return False
                if not self._thread.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, timeout: float) -> None:
        """Deliver what can be delivered within `timeout`; the rest stays in the spool."""
        self.wait(self.enqueued, timeout)
        with self._cond:
            self._closing = True
            self._give_up = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception as error:  # e.g. the buffer's disk is full: keep going, later
                _log.exception("metric sender: %s", error)
                with self._cond:
                    self.failures += 1
                    self.last_error = error
                    self._backoff = min(self._retry_max, max(0.05, self._backoff * 2))
                    self._retry_at = time.monotonic() + self._backoff
                    self._cond.notify_all()
                    if self._closing and self._give_up:
                        return
                    self._cond.wait(self._backoff)

    def _step(self) -> bool:
        """One round: buffer what is pending, deliver what is buffered. True: stop."""
        with self._cond:
            while not self._ready_locked():
                self._cond.wait(self._sleep_locked())
            if self._closing and self._give_up:
                self._spool_pending_locked()
                self._spool.sync()
                self.synced = self.spooled
                self._cond.notify_all()
                return True
            self._spool_pending_locked()
            if self._wanted > self.synced:
                self._spool.sync()  # someone waits: make the buffer durable first
                self.synced = self.spooled
        self._deliver()
        return False

    def _ready_locked(self) -> bool:
        """Whether there is work: a full batch, records pending for `flush_interval`, a
        waiter, or buffered requests whose retry time has come."""
        now = time.monotonic()
        if self._closing and self._give_up:
            return True
        if self._pending and (
            self._pending_records >= self._batch_size
            or self._wanted > self.spooled
            or now - self._pending_since >= self._flush_interval
        ):
            return True
        return bool(self._spool.entries) and now >= self._retry_at

    def _sleep_locked(self) -> float | None:
        now = time.monotonic()
        deadlines = []
        if self._pending:
            deadlines.append(self._pending_since + self._flush_interval)
        if self._spool.entries:
            deadlines.append(self._retry_at)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _spool_pending_locked(self) -> None:
        if not self._pending:
            return
        pending = self._pending
        # Consecutive calls without a key travel together (a loop of single `record` calls
        # becomes full batches); a keyed call keeps its own requests, so its keys repeat.
        groups: list[tuple[list[MetricRecord], str | None]] = []
        for records, key in pending:
            if key is None and groups and groups[-1][1] is None:
                groups[-1][0].extend(records)
            else:
                groups.append((list(records), key))
        for index, (records, key) in enumerate(groups):
            before, after = self.spooled, self.spooled + len(records)
            try:
                self._spool.append(_encode_batches(records, key, self._batch_size), before, after)
            except BaseException:
                self._pending = groups[index:]  # kept in memory, in order, for the next try
                self._pending_records = sum(len(records) for records, _ in self._pending)
                raise
            self.spooled = after
        self._pending = []
        self._pending_records = 0
        self._cond.notify_all()

    def _deliver(self) -> None:
        """Send spooled requests in order until the spool is empty or the server is away."""
        while True:
            with self._cond:
                self._spool_pending_locked()  # keep new records safe while a backlog drains
                if not self._spool.entries or self._give_up:
                    return
                entry = self._spool.entries[0]
            try:
                self._post(entry.key, entry.body)
            except _Rejected as error:
                self._reject(entry, error)
                continue
            except Exception as error:  # server away or failing: back off, keep the spool
                with self._cond:
                    self.failures += 1
                    self.last_error = error
                    self._backoff = min(self._retry_max, max(0.05, self._backoff * 2))
                    self._retry_at = time.monotonic() + self._backoff
                    self._cond.notify_all()
                return
            with self._cond:
                self._spool.ack()
                self._backoff = 0.0
                if entry.ticket:
                    self.sent = max(self.sent, entry.ticket)
                if not self._spool.entries:
                    self.sent = self.spooled
                self._cond.notify_all()

    def _reject(self, entry: _Entry, error: _Rejected) -> None:
        # Keep the refused request next to the spool for a human, and move on: one bad
        # request must not stop every later one.
        with open(self._spool.directory / "rejected.log", "ab") as dead:
            dead.write(f"{error}\t".encode() + entry.key.encode() + b"\t" + entry.body + b"\n")
        _log.warning("metric service refused a batch (kept in rejected.log): %s", error)
        with self._cond:
            self.rejected += 1
            self.last_error = error
            self._spool.ack()
            if entry.ticket:
                self.sent = max(self.sent, entry.ticket)
            if not self._spool.entries:
                self.sent = self.spooled
            self._cond.notify_all()


# -- the store ----------------------------------------------------------------------------------


class _Page(msgspec.Struct):
    points: list[MetricRecord]
    total: int = 0


class _Latest(msgspec.Struct):
    latest: dict[str, MetricRecord]


_decode_page = msgspec.json.Decoder(_Page).decode
_decode_latest = msgspec.json.Decoder(_Latest).decode
_decode_summary = msgspec.json.Decoder(MetricSummary).decode


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
                _check_names(record)
            except InvalidRecord as error:
                if not indexed:
                    raise
                raise error.at_index(index) from None
            checked.add(names)

    def _submit(self, batch: list[MetricRecord], idempotency_key: str | None) -> None:
        if batch:
            self._store._sender.enqueue(batch, idempotency_key)

    def flush(self) -> None:
        """Block until everything recorded so far reached the server, or is durable in the
        offline buffer while the server is away."""
        self._store._check_open()
        self._store._sender.wait(self._store._sender.enqueued)

    def close(self) -> None:
        self._store._close_blocking()


class RemoteMetricsStore(RecordsThroughSync):
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
        import httpx

        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get("CRUCIBLE_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._reader = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._close_timeout = close_timeout
        base = Path(buffer_dir) if buffer_dir is not None else default_buffer_dir(self.url)
        self._spool = _open_spool(base)
        self.buffer_dir = self._spool.directory
        self._closed = False
        self._sender = _Sender(
            self._spool,
            self._post,
            batch_size=batch_size,
            flush_interval=flush_interval,
            retry_max=retry_max,
        )
        self._sync: _SyncRemote = _SyncRemote(self)

    # -- transport ------------------------------------------------------------------------

    def _post(self, key: str, body: bytes) -> None:
        import httpx

        headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
        try:
            response = self._http.post("/api/v1/metrics/batch", content=body, headers=headers)
        except httpx.TransportError:
            # Once more on a fresh connection: a pooled one may have died with a restarted
            # server. Re-sending is safe, the idempotency key dedupes it.
            response = self._http.post("/api/v1/metrics/batch", content=body, headers=headers)
        status = response.status_code
        if status < 300:
            return
        if 400 <= status < 500 and status not in (408, 429):
            raise _Rejected(f"HTTP {status}: {response.text[:300]}")
        response.raise_for_status()

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> httpx.Response | None:
        """GET `path`; None for a 404; `ServiceUnavailable` when unreachable or failing."""
        import httpx

        try:
            response = self._reader.get(path, params=params)
        except httpx.HTTPError as error:
            raise ServiceUnavailable(
                f"metric service at {self.url} unreachable: {error}"
            ) from error
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise ServiceUnavailable(
                f"metric service at {self.url} answered {response.status_code}: "
                f"{response.text[:300]}"
            )
        return response

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Wait until what was recorded so far was delivered (or buffered while the server
        is away), then run a blocking request in a worker thread."""
        self._check_open()
        sender = self._sender
        if sender.sent < sender.enqueued:
            await anyio.to_thread.run_sync(
                functools.partial(sender.wait, sender.enqueued), abandon_on_cancel=True
            )
        return await anyio.to_thread.run_sync(functools.partial(fn, *args))

    # -- state ----------------------------------------------------------------------------

    @property
    def sync(self) -> _SyncRemote:
        return self._sync

    @property
    def online(self) -> bool:
        """False while deliveries fail (the records wait in the offline buffer)."""
        return self._sender.online

    @property
    def buffered(self) -> int:
        """Requests in the offline buffer, not yet acknowledged by the server."""
        return self._sender.buffered

    @property
    def rejected(self) -> int:
        """Requests the server refused for good (kept in `buffer_dir/rejected.log`)."""
        return self._sender.rejected

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the metrics store is closed; open a new one to read or record")

    # -- the MetricsStore protocol --------------------------------------------------------

    async def flush(self) -> None:
        self._check_open()
        await anyio.to_thread.run_sync(
            functools.partial(self._sender.wait, self._sender.enqueued), abandon_on_cancel=True
        )

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
        if query.empty or (query.step_max is not None and query.step_max < 0):
            return []
        if not _valid(run_id, metric):
            return []
        params: dict[str, Any] = {"limit": 10_000}
        if metric is not None:
            params["metric"] = metric
        if query.step_min is not None:
            params["step_min"] = max(0, query.step_min)
        if query.step_max is not None:
            params["step_max"] = query.step_max
        for name, moment in (("since", since), ("until", until)):
            if moment is not None:
                params[name] = moment.isoformat()

        def read() -> list[MetricRecord]:
            records: list[MetricRecord] = []
            while True:
                response = self._get(
                    _run_path(run_id, "metrics"), {**params, "offset": len(records)}
                )
                if response is None:
                    return records
                page = _decode_page(response.content)
                records.extend(page.points)
                if not page.points or len(records) >= page.total:
                    return records

        return await self._blocking(read)

    async def latest(self, run_id: str) -> dict[str, MetricRecord]:
        if not _valid(run_id):
            return {}

        def latest() -> dict[str, MetricRecord]:
            response = self._get(_run_path(run_id, "metrics/latest"))
            if response is None:
                return {}
            return dict(sorted(_decode_latest(response.content).latest.items()))

        return await self._blocking(latest)

    async def summary(self, run_id: str, metric: str) -> MetricSummary:
        if not _valid(run_id, metric):
            raise MetricNotFound(run_id, metric)

        def summary() -> MetricSummary:
            response = self._get(_run_path(run_id, f"metrics/{metric}/stats"))
            if response is None:
                raise MetricNotFound(run_id, metric)
            return _decode_summary(response.content)

        return await self._blocking(summary)

    async def history(self, run_id: str, metric: str, max_points: int) -> list[MetricRecord]:
        check_max_points(max_points)
        if not _valid(run_id, metric):
            return []

        def history() -> list[MetricRecord]:
            path = _run_path(run_id, f"metrics/{metric}")
            response = self._get(path, {"max_points": max_points})
            if response is None:
                return []
            return _decode_page(response.content).points

        return await self._blocking(history)

    async def runs(self) -> list[str]:
        def runs() -> list[str]:
            response = self._get("/api/v1/runs")
            listed = [] if response is None else msgspec.json.decode(response.content)["runs"]
            return sorted(run["run_id"] for run in listed)

        return await self._blocking(runs)

    async def delete_run(self, run_id: str) -> int:
        import httpx

        if not _valid(run_id):
            return 0

        def delete() -> int:
            try:
                response = self._reader.delete(_run_path(run_id, ""))
            except httpx.HTTPError as error:
                raise ServiceUnavailable(f"metric service at {self.url}: {error}") from error
            if response.status_code == 404:
                return 0
            if response.status_code >= 400:
                raise ServiceUnavailable(f"delete_run answered {response.status_code}")
            deleted: int = msgspec.json.decode(response.content)["deleted"]
            return deleted

        return await self._blocking(delete)

    async def close(self) -> None:
        """Send what the server takes within `close_timeout`; the rest stays buffered."""
        await anyio.to_thread.run_sync(self._close_blocking)

    def _close_blocking(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sender.close(self._close_timeout)
        finally:
            self._spool.close()
            self._http.close()
            self._reader.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _valid(run_id: str, metric: str | None = None) -> bool:
    """Whether the service could hold this run (and metric): others have no records."""
    try:
        check_run_id(run_id)
        if metric is not None:
            check_metric_name(metric)
    except InvalidRecord:
        return False
    return True


def _run_path(run_id: str, rest: str) -> str:
    check_run_id(run_id)  # the rules also keep an id from changing the path
    return f"/api/v1/runs/{run_id}/{rest}".rstrip("/")
