"""``open_training``: the supervision tree of one training run.

    rest_for_one [metrics, registry, checkpoints, session]

A restarted checkpoint manager restarts the session after it; a session crash restarts only
the session (which reloads the last state checkpoint and replays). Most failed operations
never get that far: the session retries them in place (``retry``), and restarts only when the
backend itself is lost; ``max_restarts`` and ``retry.max_retries`` are separate limits.
Checkpoints are saved through the session client, so a state checkpoint is ordered with the
training operations and becomes the point replays start from.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import attrs

from crucible.actors import (
    ActorRef,
    Backoff,
    ChildSpec,
    NamedRef,
    Runtime,
    RuntimeEvent,
    SupervisorRef,
)
from crucible.metrics import StreamingMetrics
from crucible.telemetry import execute
from crucible.training.checkpoints import CheckpointManager, CheckpointManagerClient
from crucible.training.registry import ModelRegistry, ModelRegistryClient
from crucible.training.session import (
    BackendFactory,
    Journal,
    Session,
    SessionClient,
    SessionRetry,
)

log = logging.getLogger("crucible.training")


@attrs.frozen
class TrainingTree:
    """Handles to the running tree. ``session`` is a TrainingBackend."""

    session: SessionClient
    checkpoints: CheckpointManagerClient
    registry: ModelRegistryClient
    metrics: Any  # ActorRef[StreamingMetrics]
    supervisor: SupervisorRef
    journal: Journal

    @property
    def restarts(self) -> int:
        """How many times the session was rebuilt after a failure."""
        return max(self.journal.incarnations - 1, 0)

    @property
    def retries(self) -> int:
        """How many times a failed operation was sent again in place."""
        return self.journal.retries


async def _delete_snapshots(session: SessionClient, journal: Journal) -> None:
    """Best effort: the session's snapshots are of no use once the run is over (a resume
    starts from the checkpoint manager's checkpoints)."""
    if journal.failure is not None or any(not e.done for e in journal.entries):
        return
    # Nothing is left to replay: a restart during the deletes must not load a deleted slot.
    journal.base = None
    with anyio.move_on_after(10.0):
        for path in journal.snapshot_paths.values():
            try:
                await (await session.delete_checkpoint(path))
            except Exception:
                log.debug("could not delete session snapshot %s", path, exc_info=True)
    journal.snapshot_paths.clear()


def _named(runtime: Runtime, name: str) -> ActorRef[Any]:
    # NamedRef offers the call/cast surface the typed clients use.
    return cast("ActorRef[Any]", NamedRef(runtime, name, timeout=30.0))


@asynccontextmanager
async def open_training(
    runtime: Runtime,
    make_backend: BackendFactory,
    log_dir: Path | str,
    *,
    registry_path: Path | str | None = None,
    resume_from: str | None = None,
    name: str = "training",
    max_restarts: int = 10,
    max_seconds: float = 60.0,
    backoff: Backoff | None = None,
    op_timeout: float = 120.0,
    max_checkpoints: int | None = None,
    retry: SessionRetry | None = None,
    snapshot_every: int = 0,
) -> AsyncIterator[TrainingTree]:
    """Start the tree under ``runtime``; leaving the block stops it (newest first).

    ``make_backend(n)`` builds the backend of the session's n-th incarnation; ``resume_from``
    is a state checkpoint path to start from. When the tree exceeds ``max_restarts`` within
    ``max_seconds`` it stops, and every pending operation fails with TrainingFailed naming
    the last failure. ``retry`` is how a failed operation is retried in place before the
    backend counts as lost; with ``snapshot_every`` > 0 the session saves a snapshot of its own
    every that many optimizer steps, so that a restart replays at most that many steps (the
    snapshots are deleted when the block ends normally).
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(make_backend, base=resume_from)
    session_name = f"{name}.session"
    session = SessionClient(runtime, session_name, journal)
    registry_file = Path(registry_path) if registry_path else log_dir / "registry.sqlite"

    def on_runtime_event(event: RuntimeEvent) -> None:
        # The runtime (layer 1) cannot import telemetry: the tree reports for it.
        execute(
            f"crucible.actor.{event.kind}",
            {"delay_s": event.delay} if event.delay is not None else {},
            {
                "actor": event.actor,
                "supervisor": event.supervisor,
                "reason": None if event.reason is None else str(event.reason),
            },
        )
        if event.kind == "escalated" and event.actor == f"Supervisor({name!r})":
            journal.give_up(event.reason.error if event.reason else None)

    runtime.add_listener(on_runtime_event)
    supervisor = await runtime.supervise(
        [
            ChildSpec("metrics", StreamingMetrics, name=f"{name}.metrics"),
            ChildSpec("registry", lambda: ModelRegistry(registry_file), name=f"{name}.registry"),
            ChildSpec(
                "checkpoints",
                lambda: CheckpointManager(
                    log_dir, lambda: session, max_checkpoints=max_checkpoints
                ),
                name=f"{name}.checkpoints",
                shutdown=30.0,
            ),
            ChildSpec(
                "session",
                lambda: Session(
                    journal, op_timeout=op_timeout, retry=retry, snapshot_every=snapshot_every
                ),
                name=session_name,
                shutdown=30.0,
            ),
        ],
        strategy="rest_for_one",
        max_restarts=max_restarts,
        max_seconds=max_seconds,
        backoff=backoff or Backoff(initial=0.01, maximum=1.0),
        name=name,
    )
    try:
        yield TrainingTree(
            session=session,
            # Named refs, so the handles keep working after the children restart.
            checkpoints=CheckpointManagerClient(_named(runtime, f"{name}.checkpoints")),
            registry=ModelRegistryClient(_named(runtime, f"{name}.registry")),
            metrics=NamedRef(runtime, f"{name}.metrics"),
            supervisor=supervisor,
            journal=journal,
        )
        await _delete_snapshots(session, journal)
    finally:
        runtime.remove_listener(on_runtime_event)
        if supervisor.ref.alive:
            await supervisor.stop()
        if journal.failure is None and any(not e.done for e in journal.entries):
            journal.give_up(None)
