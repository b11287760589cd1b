"""A run that logs to the metric service too (``service_url``), besides its run directory.

The run directory stays the run's record; the service gets a copy through a
``RemoteMetricsStore`` whose on-disk buffer lives in the run directory
(``RUN_DIR/service-buffer``). Recording into it only validates and enqueues, so a service
that is down at the start, or goes away mid-run, never stops or slows training: what it
missed waits in the buffer and arrives, once and in order, when it is back (during this run,
or from a later ``--resume`` of the run, which reopens the same buffer).

What goes: the metrics (``TeeMetricsStore``: every record into metrics.jsonl and the
service), the run record (created at the start, a heartbeat every ``heartbeat_every``
seconds, finished with its status and summary), each checkpoint as it is saved
(``ReportedCheckpoints``) and the registered model version. The token is read from
``CRUCIBLE_TOKEN`` by the store, never from the config.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import attrs
import msgspec

from crucible.metrics import (
    CheckpointRef,
    MetricRecord,
    MetricsStore,
    ModelVersionRef,
    RemoteMetricsStore,
    RemoteRuns,
    RunSpec,
    RunUpdate,
    coerce_batch,
)
from crucible.recipes._config import TrainConfig, check_service_url, config_to_dict
from crucible.training import CheckpointManagerClient, ModelRecord
from crucible.training.checkpoints import CheckpointRecord

__all__ = [
    "BUFFER_NAME",
    "SERVICE_URL_ENV",
    "ReportedCheckpoints",
    "ServiceLink",
    "TeeMetricsStore",
    "checkpoint_ref",
    "end_notes",
    "model_version_ref",
    "run_tags",
    "service_status",
    "service_url_of",
    "summary_numbers",
]

SERVICE_URL_ENV = "CRUCIBLE_SERVICE_URL"
BUFFER_NAME = "service-buffer"  # the offline buffer's directory inside the run directory
HEARTBEAT_EVERY = 30.0  # seconds; the service calls a run crashed after 300 s of silence
_log = logging.getLogger("crucible.recipes.service")


def service_url_of(config: TrainConfig) -> str | None:
    """The service this run logs to: ``service_url``, else ``$CRUCIBLE_SERVICE_URL``, else
    none. Raises ConfigError for a URL that is not one (or carries credentials)."""
    if config.service_url is not None:
        return config.service_url
    url = os.environ.get(SERVICE_URL_ENV, "").strip()
    return check_service_url(url, SERVICE_URL_ENV) if url else None


def run_tags(backend: str) -> list[str]:
    return ["sl_basic", f"backend:{backend}"]


def service_status(status: str) -> Literal["completed", "failed"]:
    """The service's status for a run outcome. The service knows no "stopped": a run
    stopped on request did not complete, and its notes say it can be resumed."""
    return "completed" if status == "completed" else "failed"


def end_notes(status: str, error: str | None) -> str:
    if status == "completed":
        return ""
    if status == "stopped":
        return "stopped on request; resume it with python -m crucible.run --resume RUN_DIR"
    if status == "killed":
        return "ended without a summary.json: the process was killed"
    return f"failed: {error or 'see the run directory'}"[:4000]


def summary_numbers(summary: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a summary.json (nested objects as ``outer/inner``), as the
    service's run summary takes them; text, flags and nulls stay in the file."""
    numbers: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, Mapping):
            for inner, number in summary_numbers(value).items():
                numbers[f"{key}/{inner}"] = number
        elif (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ):
            numbers[key] = float(value)
    return numbers


def checkpoint_ref(record: CheckpointRecord, created_at: datetime | None = None) -> CheckpointRef:
    return CheckpointRef(
        name=record.name,
        step=record.batch,
        state_path=record.state_path,
        sampler_path=record.sampler_path,
        final=record.final,
        metrics={k: v for k, v in record.metrics.items() if math.isfinite(v)},
        created_at=created_at,
    )


def model_version_ref(record: ModelRecord) -> ModelVersionRef:
    try:
        created: datetime | None = datetime.fromisoformat(record.created_at)
    except ValueError:
        created = None
    if created is not None and created.tzinfo is None:
        created = created.replace(tzinfo=UTC)  # the registry writes UTC
    return ModelVersionRef(
        name=record.name,
        version=record.version,
        stage=record.stage,
        checkpoint=record.checkpoint_path,
        created_at=created,
    )


class _TeeSync:
    def __init__(self, tee: TeeMetricsStore) -> None:
        self._tee = tee

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
        record = self._tee.primary.sync.record(
            run_id, metric, value, step=step, metadata=metadata, timestamp=timestamp
        )
        self._tee.mirror_records([record])
        return record

    def record_many(
        self,
        records: Iterable[MetricRecord | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> None:
        batch = coerce_batch(records)
        self._tee.primary.sync.record_many(batch, idempotency_key=idempotency_key)
        self._tee.mirror_records(batch)

    def flush(self) -> None:
        self._tee.primary.sync.flush()


class TeeMetricsStore:
    """A MetricsStore that records into ``primary`` (the run's metrics.jsonl) and, the very
    same records (timestamps included), into ``mirror`` (the service); reads, flushes and
    closes are the primary's.

    The mirror is only handed records (validation and an in-memory enqueue: its writer and
    delivery threads do the rest), never awaited, so it cannot slow the caller; a record the
    mirror refuses is logged once and the run goes on (the file has it).
    """

    def __init__(self, primary: MetricsStore, mirror: RemoteMetricsStore) -> None:
        self.primary = primary
        self.mirror = mirror
        self._sync = _TeeSync(self)
        self._warned = False

    def mirror_records(self, records: list[MetricRecord]) -> None:
        try:
            self.mirror.sync.record_many(records)
        except Exception as error:  # the run's own file has them; the service copy lags
            if not self._warned:
                self._warned = True
                _log.warning(
                    "metric service: records not sent (%s: %s)", type(error).__name__, error
                )

    @property
    def sync(self) -> _TeeSync:
        return self._sync

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
        record = await self.primary.record(
            run_id, metric, value, step=step, metadata=metadata, timestamp=timestamp
        )
        self.mirror_records([record])
        return record

    async def record_many(
        self,
        records: Iterable[MetricRecord | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> None:
        batch = coerce_batch(records)
        await self.primary.record_many(batch, idempotency_key=idempotency_key)
        self.mirror_records(batch)

    async def flush(self) -> None:
        # Only the file: the service's copy is on its way and must not make a checkpoint wait.
        await self.primary.flush()

    async def read(self, run_id: str, **filters: Any) -> list[MetricRecord]:
        return await self.primary.read(run_id, **filters)

    async def latest(self, run_id: str) -> dict[str, MetricRecord]:
        return await self.primary.latest(run_id)

    async def summary(self, run_id: str, metric: str) -> Any:
        return await self.primary.summary(run_id, metric)

    async def history(self, run_id: str, metric: str, max_points: int) -> list[MetricRecord]:
        return await self.primary.history(run_id, metric, max_points)

    async def runs(self) -> list[str]:
        return await self.primary.runs()

    async def delete_run(self, run_id: str) -> int:
        return await self.primary.delete_run(run_id)

    async def close(self) -> None:
        await self.primary.close()  # the mirror belongs to the ServiceLink, which closes it

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class ReportedCheckpoints:
    """A CheckpointManagerClient whose saves are also sent to the service as they happen."""

    def __init__(self, inner: CheckpointManagerClient, link: ServiceLink) -> None:
        self._inner = inner
        self._link = link

    async def save(self, *args: Any, **kwargs: Any) -> CheckpointRecord:
        record = await self._inner.save(*args, **kwargs)
        self._link.checkpoints([record], created_at=datetime.now(UTC))
        return record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ServiceLink:
    """The run's link to the service: its remote store (the offline buffer in the run
    directory) and run record. Nothing here waits on the network but ``finish``, which waits
    at most ``wait_s`` seconds."""

    def __init__(
        self,
        url: str,
        run_dir: Path,
        run_id: str,
        *,
        wait_s: float = 5.0,
        heartbeat_every: float = HEARTBEAT_EVERY,
    ) -> None:
        self.url = url
        self.run_dir = run_dir
        self.run_id = run_id
        self.heartbeat_every = heartbeat_every
        self.store = RemoteMetricsStore(url, buffer_dir=run_dir / BUFFER_NAME, close_timeout=wait_s)
        self.buffer_dir = self.store.buffer_dir
        self._runs = RemoteRuns(self.store)
        self._warned = False
        self._started = False

    def _guard(self, what: str, send: Any, *args: Any) -> None:
        """Send, or log once why not: the service's copy must never fail the run."""
        try:
            send(*args)
        except Exception as error:
            if not self._warned:
                self._warned = True
                _log.warning(
                    "metric service: %s not sent (%s: %s)", what, type(error).__name__, error
                )

    def start(self, config: TrainConfig, *, resume: bool, records: list[MetricRecord]) -> None:
        """Create the run record (or resume it, with the same id).

        A resumed run drops the steps after its checkpoint and trains them again; the
        service may already hold those steps, and points cannot be dropped by step there.
        So a resume replaces the service's copy of the run with the run directory's
        (``records``: metrics.jsonl once truncated), then goes on live. The requests go
        through the buffer in order, after whatever an earlier process left in it.
        """
        # The config as config.json has it (with the run directory it ran in).
        recorded = config_to_dict(attrs.evolve(config, log_dir=str(self.run_dir)))
        spec = RunSpec(
            id=self.run_id, name=config.name, tags=run_tags(config.backend), config=recorded
        )
        if resume:
            # Created first so that the delete finds it whatever reached the service before.
            self._guard("run", self._runs.create, RunSpec(id=self.run_id))
            self._guard("run", self._runs.delete, self.run_id)
            if records:
                started = min(record.timestamp for record in records)
                spec = msgspec.structs.replace(spec, started_at=started)
        self._guard("run", self._runs.create, spec)
        self._started = True
        if records and resume:
            self._guard("metrics", self.store.sync.record_many, records)

    def checkpoints(
        self, records: Iterable[CheckpointRecord], created_at: datetime | None = None
    ) -> None:
        refs = [checkpoint_ref(record, created_at) for record in records]
        if refs:
            self._guard("checkpoint", self._runs.update, self.run_id, RunUpdate(checkpoints=refs))

    def model_version(self, record: ModelRecord) -> None:
        update = RunUpdate(model_versions=[model_version_ref(record)])
        self._guard("model version", self._runs.update, self.run_id, update)

    async def keep_alive(self) -> None:
        """Heartbeat every ``heartbeat_every`` seconds until cancelled."""
        while True:
            await anyio.sleep(self.heartbeat_every)
            self._guard("heartbeat", self._runs.heartbeat, self.run_id)

    async def finish(self, status: str, summary: Mapping[str, Any], error: str | None) -> int:
        """End the run record, then wait at most ``wait_s`` for the service to take what is
        buffered; returns how many requests are still buffered (sent by a later ``--resume``
        of the run, or imported with ``python -m crucible.serve import``)."""
        fields: dict[str, Any] = {
            "status": service_status(status),
            "ended_at": datetime.now(UTC),
            "summary": summary_numbers(summary),
            "notes": end_notes(status, error),
        }
        if self._started:  # else the run failed before its record was made: nothing to end
            update = msgspec.convert(fields, RunUpdate)
            self._guard("run end", self._runs.update, self.run_id, update)
        try:
            await self.store.close()
        except Exception as problem:  # the buffer's disk failed: the run directory has it all
            _log.warning("metric service: buffer not closed cleanly: %s", problem)
        return self.store.buffered
