"""CheckpointManager actor: names, saves, lists, ranks, prunes and reloads a run's checkpoints.

State lives in ``<log_dir>/checkpoints.jsonl`` (see ``_log``), read again by every
new incarnation, so a restarted manager (or a restarted process) continues where the last
one stopped. Backend calls the manager makes (save, delete, open a sampler) are idempotent, so
a failed one is retried with backoff up to a limit; the checkpoint line is written only after
the backend has written the files.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
import attrs

from crucible.actors import Actor, handler
from crucible.telemetry import execute
from crucible.training.checkpoints._log import (
    CHECKPOINTS_FILE,
    CheckpointRecord,
    append_record,
    check_metrics,
    read_log,
    repair_log,
    rewrite_log,
)
from crucible.training.checkpoints._messages import (
    BestCheckpoint,
    CheckpointMetricNotFound,
    GetResumePoint,
    InvalidStep,
    LatestCheckpoint,
    ListCheckpoints,
    LoadForSampling,
    Mode,
    NoCheckpoints,
    PruneCheckpoints,
    SaveCheckpoint,
)
from crucible.training.port import (
    BackendOpFailed,
    CheckpointNotFound,
    SamplingClient,
    TrainingBackend,
)

T = TypeVar("T")


@attrs.frozen
class RetryPolicy:
    """Retries of idempotent backend calls: ``attempts`` in all, backoff doubling from
    ``initial_s`` up to ``max_s``. An attempt that takes longer than ``timeout_s`` counts as
    failed (the backend op itself is not cancelled; waiting for it stops)."""

    attempts: int = 4
    initial_s: float = 0.05
    max_s: float = 1.0
    timeout_s: float | None = 60.0


def _newest_first(records: list[CheckpointRecord]) -> list[CheckpointRecord]:
    # log order breaks ties between equal steps: the later line is newer
    order = {record.name: index for index, record in enumerate(records)}
    return sorted(records, key=lambda r: (r.batch, order[r.name]), reverse=True)


class CheckpointManager(Actor[list[CheckpointRecord]]):
    """``state`` is the list of checkpoint records in log order.

    ``backend`` returns the backend to save through, called each time (a supervised session
    may have rebuilt it since the last call).
    """

    caller_errors = (
        InvalidStep,
        NoCheckpoints,
        CheckpointMetricNotFound,
        CheckpointNotFound,
        ValueError,
    )

    def __init__(
        self,
        log_dir: Path | str,
        backend: Callable[[], TrainingBackend],
        *,
        max_checkpoints: int | None = None,
        name_format: str = "step_%06d",
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        if max_checkpoints is not None and max_checkpoints < 1:
            raise ValueError(f"max_checkpoints must be >= 1 or None, got {max_checkpoints}")
        self.log_path = Path(log_dir) / CHECKPOINTS_FILE
        self._backend = backend
        self._max_checkpoints = max_checkpoints
        self._name_format = name_format
        self._retry = retry

    async def init(self) -> list[CheckpointRecord]:
        def load() -> list[CheckpointRecord]:
            repair_log(self.log_path)
            return read_log(self.log_path)

        return await anyio.to_thread.run_sync(load)

    async def _idempotent(self, what: str, call: Callable[[], Awaitable[Awaitable[T]]]) -> T:
        """Run a backend call that is safe to repeat, retrying BackendOpFailed with backoff."""
        delay = self._retry.initial_s
        for attempt in range(1, self._retry.attempts + 1):
            try:
                with anyio.fail_after(self._retry.timeout_s):
                    return await (await call())
            except (BackendOpFailed, TimeoutError):
                if attempt == self._retry.attempts:
                    raise
                execute(
                    "crucible.checkpoint.retry",
                    {"attempt": attempt, "delay_s": delay},
                    {"operation": what},
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, self._retry.max_s)
        raise AssertionError("unreachable")  # pragma: no cover

    @handler
    async def save(self, message: SaveCheckpoint) -> CheckpointRecord:
        if isinstance(message.step, bool) or message.step < 0:
            raise InvalidStep(f"checkpoint step must be an integer >= 0, got {message.step!r}")
        metrics = check_metrics(message.metrics or {})
        name = self._name_format % message.step
        started = time.perf_counter()
        backend = self._backend()
        state_path = sampler_path = None
        if message.kind in ("state", "both"):
            saved = await self._idempotent("save_state", lambda: backend.save_state(name))
            state_path = saved.path
        if message.kind in ("sampler", "both"):
            sampler = await self._idempotent(
                "save_weights_for_sampler", lambda: backend.save_weights_for_sampler(name)
            )
            sampler_path = sampler.path
        record = CheckpointRecord(
            name=name,
            batch=message.step,
            epoch=message.epoch,
            state_path=state_path,
            sampler_path=sampler_path,
            final=message.final,
            metrics=metrics,
        )
        await anyio.to_thread.run_sync(append_record, self.log_path, record)
        self.state = [r for r in self.state if r.name != name] + [record]
        execute(
            "crucible.checkpoint.saved",
            {"step": message.step, "duration_ms": (time.perf_counter() - started) * 1e3},
            {
                "name": name,
                "kind": message.kind,
                "final": message.final,
                "checkpoint_path": state_path or sampler_path,
            },
        )
        if self._max_checkpoints is not None and len(self.state) > self._max_checkpoints:
            await self._remove(self._over_limit(self._max_checkpoints))
        return record

    @handler
    def list_checkpoints(self, message: ListCheckpoints) -> list[CheckpointRecord]:
        return _newest_first(self.state)

    @handler
    def latest(self, message: LatestCheckpoint) -> CheckpointRecord:
        if not self.state:
            raise NoCheckpoints(f"no checkpoint in {self.log_path} yet")
        return _newest_first(self.state)[0]

    @handler
    def best(self, message: BestCheckpoint) -> CheckpointRecord:
        return self._ranked(message.metric, message.mode)[0]

    @handler
    def resume_point(self, message: GetResumePoint) -> CheckpointRecord | None:
        """The newest checkpoint with a state path (what a resumed run loads), if any."""
        return self._latest_state()

    @handler
    async def prune(self, message: PruneCheckpoints) -> list[CheckpointRecord]:
        """Keep the ``keep`` best by ``metric``, every checkpoint without the metric, and the
        latest state checkpoint; delete the rest (files first, then the log lines)."""
        if message.keep < 0:
            raise ValueError(f"keep must be >= 0, got {message.keep}")
        ranked = self._ranked(message.metric, message.mode)
        keep = {record.name for record in ranked[: message.keep]}
        latest_state = self._latest_state()
        if latest_state is not None:
            keep.add(latest_state.name)
        doomed = [r for r in ranked if r.name not in keep]
        await self._remove(doomed)
        execute(
            "crucible.checkpoint.pruned",
            {"removed": len(doomed), "kept": len(self.state)},
            {"metric": message.metric, "mode": message.mode},
        )
        return _newest_first(doomed)

    @handler
    async def load_for_sampling(self, message: LoadForSampling) -> SamplingClient:
        record = next((r for r in self.state if r.name == message.name), None)
        if record is None:
            known = ", ".join(r.name for r in _newest_first(self.state)[:5]) or "none"
            raise CheckpointNotFound(
                f"no checkpoint named {message.name!r} in {self.log_path} (newest: {known})"
            )
        path = record.sampler_path or record.state_path
        backend = self._backend()
        return await self._idempotent("sampling_client", lambda: backend.sampling_client(path))

    # ---- helpers -------------------------------------------------------------------------

    def _latest_state(self) -> CheckpointRecord | None:
        with_state = [r for r in self.state if r.state_path is not None]
        return _newest_first(with_state)[0] if with_state else None

    def _ranked(self, metric: str, mode: Mode) -> list[CheckpointRecord]:
        """Checkpoints that have ``metric``, best first (newer first among equals)."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if not self.state:
            raise NoCheckpoints(f"no checkpoint in {self.log_path} yet")
        having = [r for r in _newest_first(self.state) if metric in r.metrics]
        if not having:
            raise CheckpointMetricNotFound(
                f"no checkpoint in {self.log_path} has the metric {metric!r}"
            )
        sign = 1.0 if mode == "min" else -1.0
        return sorted(having, key=lambda r: sign * r.metrics[metric])  # stable: newer first

    def _over_limit(self, limit: int) -> list[CheckpointRecord]:
        """The oldest checkpoints beyond ``limit``, never the latest state checkpoint."""
        latest_state = self._latest_state()
        removable = [r for r in reversed(_newest_first(self.state)) if r is not latest_state]
        return removable[: len(self.state) - limit]

    async def _remove(self, doomed: list[CheckpointRecord]) -> None:
        if not doomed:
            return
        backend = self._backend()
        paths = [p for r in doomed for p in (r.state_path, r.sampler_path) if p is not None]
        for path in paths:
            await self._idempotent("delete_checkpoint", _bind(backend.delete_checkpoint, path))
        names = {record.name for record in doomed}
        remaining = [r for r in self.state if r.name not in names]
        await anyio.to_thread.run_sync(rewrite_log, self.log_path, remaining)
        self.state = remaining


def _bind(fn: Callable[[str], Awaitable[T]], argument: str) -> Callable[[], Awaitable[T]]:
    return lambda: fn(argument)
