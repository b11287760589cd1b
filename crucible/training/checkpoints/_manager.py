"""CheckpointManager actor: names, saves, lists, ranks, prunes and reloads a run's checkpoints.

State lives in ``<log_dir>/checkpoints.jsonl`` (see ``_log``), read again by every
new incarnation, so a restarted manager (or a restarted process) continues where the last
one stopped. Backend calls the manager makes (save, delete, open a sampler) are idempotent, so
a failed one is retried with backoff up to a limit; the checkpoint line is written only after
the backend has written the files.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
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
    open_log,
    rewrite_log,
)
from crucible.training.checkpoints._messages import (
    BestCheckpoint,
    CheckpointExists,
    CheckpointMetricNotFound,
    DeleteCheckpoint,
    GetCheckpoint,
    GetResumePoint,
    InvalidStep,
    LatestCheckpoint,
    ListCheckpoints,
    LoadForSampling,
    NoCheckpoints,
    PruneCheckpoints,
    SaveCheckpoint,
)
from crucible.training.checkpoints._retention import (
    BestBy,
    Mode,
    check_mode,
    newest_first,
    prune_plan,
    ranked,
    resume_point,
    rotation_plan,
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


class CheckpointManager(Actor[list[CheckpointRecord]]):
    """``state`` is the list of checkpoint records in log order.

    ``backend`` returns the backend to save through, called each time (a supervised session
    may have rebuilt it since the last call). ``max_checkpoints`` rotates out the oldest
    checkpoints past that count; ``best_metric``/``best_mode`` name the checkpoint that
    rotation and every prune keep besides the latest one and the resume point.
    """

    caller_errors = (
        InvalidStep,
        NoCheckpoints,
        CheckpointMetricNotFound,
        CheckpointNotFound,
        CheckpointExists,
        ValueError,
    )

    def __init__(
        self,
        log_dir: Path | str,
        backend: Callable[[], TrainingBackend],
        *,
        max_checkpoints: int | None = None,
        best_metric: str | None = None,
        best_mode: Mode = "min",
        name_format: str = "step_%06d",
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        if max_checkpoints is not None and max_checkpoints < 1:
            raise ValueError(f"max_checkpoints must be >= 1 or None, got {max_checkpoints}")
        self.log_path = Path(log_dir) / CHECKPOINTS_FILE
        self._backend = backend
        self._max_checkpoints = max_checkpoints
        self._best_by: tuple[BestBy, ...] = (
            () if best_metric is None else ((best_metric, check_mode(best_mode)),)
        )
        self._name_format = name_format
        self._retry = retry

    async def init(self) -> list[CheckpointRecord]:
        return await anyio.to_thread.run_sync(open_log, self.log_path)

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
        """Save through the backend, then record the checkpoint. A name that exists is
        refused (CheckpointExists, before any file is touched) unless ``overwrite``: then its
        line is replaced in place and files of the old one that the new one lacks go."""
        if isinstance(message.step, bool) or message.step < 0:
            raise InvalidStep(f"checkpoint step must be an integer >= 0, got {message.step!r}")
        metrics = check_metrics(message.metrics or {})
        name = self._name_format % message.step
        existing = self._find(name)
        if existing is not None and not message.overwrite:
            raise CheckpointExists(
                f"a checkpoint named {name!r} (step {existing.batch}) is already in "
                f"{self.log_path}; save with overwrite=True to replace it",
                existing,
            )
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
        if existing is None:
            await anyio.to_thread.run_sync(append_record, self.log_path, record)
            self.state = [*self.state, record]
        else:
            replaced = [record if r.name == name else r for r in self.state]
            await anyio.to_thread.run_sync(rewrite_log, self.log_path, replaced)
            self.state = replaced
            await self._delete_files(_paths(existing) - _paths(record))
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
        if self._max_checkpoints is not None:
            await self._remove(rotation_plan(self.state, self._max_checkpoints, self._best_by))
        return record

    @handler
    def list_checkpoints(self, message: ListCheckpoints) -> list[CheckpointRecord]:
        return newest_first(self.state)

    @handler
    def latest(self, message: LatestCheckpoint) -> CheckpointRecord:
        if not self.state:
            raise NoCheckpoints(f"no checkpoint in {self.log_path} yet")
        return newest_first(self.state)[0]

    @handler
    def get(self, message: GetCheckpoint) -> CheckpointRecord:
        return self._named(message.name)

    @handler
    async def delete(self, message: DeleteCheckpoint) -> CheckpointRecord:
        """Remove the named checkpoint (files first, then its line), whatever its rank: an
        explicit delete is the caller's decision; only prune and rotation keep the best."""
        record = self._named(message.name)
        await self._remove([record])
        return record

    @handler
    def best(self, message: BestCheckpoint) -> CheckpointRecord:
        return self._ranked(message.metric, message.mode)[0]

    @handler
    def resume_point(self, message: GetResumePoint) -> CheckpointRecord | None:
        """The state checkpoint a resumed run loads (a final one first, else the newest)."""
        return resume_point(self.state)

    @handler
    async def prune(self, message: PruneCheckpoints) -> list[CheckpointRecord]:
        """Keep the ``keep`` best by ``metric``, every checkpoint without the metric, the best
        by the metric (even with ``keep=0``) and by ``best_metric``, the latest checkpoint and
        the resume point; delete the rest (files first, then the log lines)."""
        self._ranked(message.metric, message.mode)  # no checkpoint / no metric: typed errors
        doomed = prune_plan(self.state, message.keep, message.metric, message.mode, self._best_by)
        await self._remove(doomed)
        execute(
            "crucible.checkpoint.pruned",
            {"removed": len(doomed), "kept": len(self.state)},
            {"metric": message.metric, "mode": message.mode},
        )
        return newest_first(doomed)

    @handler
    async def load_for_sampling(self, message: LoadForSampling) -> SamplingClient:
        record = self._named(message.name)
        path = record.sampler_path or record.state_path
        backend = self._backend()
        return await self._idempotent("sampling_client", lambda: backend.sampling_client(path))

    # ---- helpers -------------------------------------------------------------------------

    def _find(self, name: str) -> CheckpointRecord | None:
        return next((r for r in self.state if r.name == name), None)

    def _named(self, name: str) -> CheckpointRecord:
        record = self._find(name)
        if record is None:
            known = ", ".join(r.name for r in newest_first(self.state)[:5]) or "none"
            raise CheckpointNotFound(
                f"no checkpoint named {name!r} in {self.log_path} (newest: {known})"
            )
        return record

    def _ranked(self, metric: str, mode: Mode) -> list[CheckpointRecord]:
        """Checkpoints that have ``metric``, best first; typed errors when there are none."""
        check_mode(mode)
        if not self.state:
            raise NoCheckpoints(f"no checkpoint in {self.log_path} yet")
        having = ranked(self.state, metric, mode)
        if not having:
            raise CheckpointMetricNotFound(
                f"no checkpoint in {self.log_path} has the metric {metric!r}"
            )
        return having

    async def _delete_files(self, paths: Iterable[str]) -> None:
        backend = self._backend()
        for path in sorted(paths):
            await self._idempotent("delete_checkpoint", _bind(backend.delete_checkpoint, path))

    async def _remove(self, doomed: list[CheckpointRecord]) -> None:
        if not doomed:
            return
        await self._delete_files(path for record in doomed for path in _paths(record))
        names = {record.name for record in doomed}
        remaining = [r for r in self.state if r.name not in names]
        await anyio.to_thread.run_sync(rewrite_log, self.log_path, remaining)
        self.state = remaining


def _paths(record: CheckpointRecord) -> set[str]:
    return {path for path in (record.state_path, record.sampler_path) if path is not None}


def _bind(fn: Callable[[str], Awaitable[T]], argument: str) -> Callable[[], Awaitable[T]]:
    return lambda: fn(argument)
