"""Building the training side of a run: backend, CheckpointManager and ModelRegistry actors.

This is the one place that knows how a training client is made: the recipe only sees the
adapters (the TrainingBackend port, the CheckpointManager and ModelRegistry clients).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs

from crucible.actors import Backoff, Runtime
from crucible.recipes._config import ConfigError, TrainConfig
from crucible.training import (
    CheckpointManagerClient,
    FaultyBackend,
    InvalidCheckpointPath,
    ModelRegistryClient,
    TrainingBackend,
    latest_state_checkpoint,
    open_training,
)
from crucible.training.port import ApplyOnce
from crucible.training.session import SessionRetry


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot be used here (missing credentials or package)."""


#: The run's one restart policy is the training tree's supervisor intensity: at most
#: ``max_restarts`` restarts of the session within this window, the backoff before each
#: doubling from 10 ms up to ``restart_backoff_s``. Past it the tree gives up and the run fails
#: (resumable from its last checkpoint); nothing above the tree restarts it again.
RESTART_WINDOW_S = 60.0


@attrs.frozen
class TrainingHandles:
    """The adapters a recipe gets, how often the session was rebuilt so far, and how many
    failed operations it sent again in place."""

    training_client: TrainingBackend
    checkpoint_store: CheckpointManagerClient
    model_registry: ModelRegistryClient
    restarts: Callable[[], int]
    retries: Callable[[], int] = lambda: 0


def registry_path(config: TrainConfig, log_dir: Path) -> Path:
    if config.registry_path is not None:
        return Path(config.registry_path)
    return log_dir.parent / "registry.sqlite"


def check_backend(config: TrainConfig) -> None:
    """Fail early, before a run directory is made, when the backend cannot be built."""
    if config.backend == "tinker" and not os.environ.get("TINKER_API_KEY"):
        raise BackendUnavailable(
            "backend=tinker needs the TINKER_API_KEY environment variable (an API key "
            "from the Tinker console); or use --backend local"
        )


def build_backend(config: TrainConfig, log_dir: Path, run_id: str) -> TrainingBackend:
    check_backend(config)
    if config.backend == "tinker":
        from crucible.training import TinkerBackend, TinkerBackendConfig

        return TinkerBackend(
            TinkerBackendConfig(
                base_model=config.base_model,
                lora_rank=config.lora_rank,
                seed=config.seed,
                base_url=config.tinker_base_url,
                user_metadata={"crucible_run": run_id},
            )
        )
    try:
        from crucible.training.backends.local import LocalBackend, LocalBackendConfig, LoraConfig
    except ImportError as error:  # torch is the `local` extra
        raise BackendUnavailable(
            f"the local backend needs the `local` extra (pip install -e '.[local]'): {error}"
        ) from error
    local = LocalBackend(
        LocalBackendConfig(
            base_model=config.base_model,
            lora=LoraConfig(rank=config.lora_rank, alpha=config.lora_alpha),
            seed=config.seed,
            checkpoint_root=log_dir / "checkpoints",
            run_id=run_id,
            num_threads=config.num_threads,
        )
    )
    # Each request id applied at most once, so the session can retry a failed op in place.
    return ApplyOnce(local)


def retry_policy(config: TrainConfig) -> SessionRetry:
    """How the session retries a failed operation in place (separate from max_restarts)."""
    return SessionRetry(
        max_retries=config.max_retries,
        backoff=Backoff(
            initial=min(config.retry_backoff_s, config.retry_backoff_max_s),
            maximum=config.retry_backoff_max_s,
            jitter=0.5,
            seed=config.seed,
        ),
    )


def snapshot_every(config: TrainConfig) -> int:
    """Session snapshots: every step on the local backend (a save costs milliseconds), never
    on tinker (a remote save costs a round trip), unless the config says."""
    if config.snapshot_every is not None:
        return config.snapshot_every
    return 1 if config.backend == "local" else 0


@asynccontextmanager
async def open_training_session(
    rt: Runtime,
    config: TrainConfig,
    log_dir: Path,
    run_id: str,
) -> AsyncIterator[TrainingHandles]:
    """The training client and its actors for one run: crucible.training's supervised tree
    (``open_training``: metrics, registry, checkpoint manager, session, rest_for_one).

    The client is the Session: a failed backend operation is retried in place (the local
    backend applies each request id once), and a lost backend restarts the session from the
    last state checkpoint (or session snapshot) and replays, so the run ends with the weights
    of a run without failures. With ``inject_faults`` each session incarnation's backend is a
    FaultyBackend with its own seed, in front of the backend's record of requests (the faults
    model a lost connection).
    """
    check_backend(config)

    def make_backend(session_incarnation: int) -> TrainingBackend:
        backend = build_backend(config, log_dir, run_id)
        if config.inject_faults <= 0:
            return backend
        return FaultyBackend(
            backend,
            seed=config.seed * 1_000_003 + session_incarnation,
            rate=config.inject_faults,
            kinds=config.fault_kinds,
            ops=config.fault_ops or None,
        )

    async with open_training(
        rt,
        make_backend,
        log_dir,
        registry_path=registry_path(config, log_dir),
        name=f"training:{run_id}",
        max_restarts=config.max_restarts,
        max_seconds=RESTART_WINDOW_S,
        backoff=Backoff(
            initial=min(0.01, config.restart_backoff_s),
            maximum=config.restart_backoff_s,
            seed=config.seed,
        ),
        op_timeout=config.op_timeout_s,
        retry=retry_policy(config),
        snapshot_every=snapshot_every(config),
    ) as tree:
        yield TrainingHandles(
            training_client=tree.session,
            checkpoint_store=tree.checkpoints,
            model_registry=tree.registry,
            restarts=lambda: tree.restarts,
            retries=lambda: tree.retries,
        )


def init_from_state_file(source_run: Path) -> Path:
    """The state file of the checkpoint that ``init_from`` (another local run directory)
    starts from: its newest state checkpoint. ConfigError names what is missing or wrong."""
    from crucible.training.backends.local import CheckpointPath  # torch: only when needed

    if not source_run.is_dir():
        raise ConfigError(f"init_from {source_run}: no such run directory")
    try:
        record = latest_state_checkpoint(source_run)
    except (OSError, ValueError) as error:
        raise ConfigError(f"init_from {source_run}: cannot read its checkpoints: {error}") from None
    if record is None or record.state_path is None:
        raise ConfigError(f"init_from {source_run}: the run has no state checkpoint to start from")
    try:
        source = CheckpointPath.parse(record.state_path)
    except InvalidCheckpointPath as error:
        raise ConfigError(f"init_from {source_run}: {error}") from None
    if source.kind != "weights":
        raise ConfigError(f"init_from: {record.state_path} is not a local state checkpoint")
    weights = source.file(source_run / "checkpoints")
    if not weights.is_file():
        raise ConfigError(f"init_from {source_run}: its checkpoint file {weights} is missing")
    return weights


def import_initial_weights(source_run: Path, log_dir: Path, run_id: str) -> str:
    """Copy the last state checkpoint of another local run into this run, for ``init_from``.

    Returns the state path to load (weights only).
    """
    from crucible.training.backends.local import CheckpointPath

    source = init_from_state_file(source_run)
    target = CheckpointPath(run_id, "weights", "init")
    destination = target.file(log_dir / "checkpoints")
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return str(target)


def source_run_id(source_run: Path) -> str | None:
    """The run id of another run directory (from its summary or config), for lineage."""
    summary = source_run / "summary.json"
    if summary.exists():
        run_id = json.loads(summary.read_text(encoding="utf-8")).get("run_id")
        return str(run_id) if run_id else None
    return source_run.name
