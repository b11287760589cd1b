"""Building the training side of a run: backend, CheckpointManager and ModelRegistry actors.

This is the one place that knows how a training client is made. Until the supervised Session
and ``open_training()`` land in ``crucible.training``, it builds the client from the backend
directly (``local``, or ``faulty(local)`` with ``inject_faults``) and spawns the manager and the
registry itself; swapping in ``open_training()`` only changes this module.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs

from crucible.actors import ActorRef, Runtime
from crucible.config import ConfigError, TrainConfig
from crucible.training import (
    CheckpointManager,
    CheckpointManagerClient,
    CheckpointRecord,
    FaultyBackend,
    ModelRegistry,
    ModelRegistryClient,
    TrainingBackend,
)


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot be used here (missing credentials or package)."""


@attrs.frozen
class TrainingHandles:
    """The adapters a recipe gets, and the raw backend (for weight snapshots in tests)."""

    training_client: TrainingBackend
    checkpoint_store: CheckpointManagerClient
    model_registry: ModelRegistryClient
    backend: TrainingBackend


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
        from crucible.training.local import LocalBackend, LocalBackendConfig, LoraConfig
    except ImportError as error:  # torch is the `local` extra
        raise BackendUnavailable(
            f"the local backend needs the `local` extra (pip install -e '.[local]'): {error}"
        ) from error
    return LocalBackend(
        LocalBackendConfig(
            base_model=config.base_model,
            lora=LoraConfig(rank=config.lora_rank, alpha=config.lora_alpha),
            seed=config.seed,
            checkpoint_root=log_dir / "checkpoints",
            run_id=run_id,
            num_threads=config.num_threads,
        )
    )


@asynccontextmanager
async def open_training_session(
    rt: Runtime,
    config: TrainConfig,
    log_dir: Path,
    run_id: str,
    *,
    incarnation: int = 0,
) -> AsyncIterator[TrainingHandles]:
    """The training client and its actors for one incarnation of a run.

    With ``inject_faults`` the client is a FaultyBackend seeded per incarnation, so a restarted
    run meets different faults than the one before it.
    """
    backend = build_backend(config, log_dir, run_id)
    connect = getattr(backend, "connect", None)
    if connect is not None:  # Tinker: the session (and a real model's tokenizer) up front
        await connect()
    client: TrainingBackend = backend
    if config.inject_faults > 0:
        client = FaultyBackend(
            backend,
            seed=config.seed * 1000 + incarnation,
            rate=config.inject_faults,
            kinds=config.fault_kinds,
        )
    refs: list[ActorRef[Any]] = []
    try:
        manager = await rt.spawn(CheckpointManager(log_dir, lambda: client))
        refs.append(manager)
        registry = await rt.spawn(ModelRegistry(registry_path(config, log_dir)))
        refs.append(registry)
        yield TrainingHandles(
            training_client=client,
            checkpoint_store=CheckpointManagerClient(manager, timeout=config.op_timeout_s),
            model_registry=ModelRegistryClient(registry),
            backend=backend,
        )
    finally:
        for ref in reversed(refs):
            await ref.stop()
        await backend.aclose()


def latest_state_checkpoint(run_dir: Path) -> CheckpointRecord | None:
    """The newest checkpoint with a state path in ``run_dir/checkpoints.jsonl`` (final first)."""
    log = run_dir / "checkpoints.jsonl"
    if not log.exists():
        return None
    records: list[CheckpointRecord] = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            records.append(CheckpointRecord.from_row(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line
    with_state = [r for r in records if r.state_path is not None]
    if not with_state:
        return None
    return max(with_state, key=lambda r: (r.final, r.batch))


def import_initial_weights(source_run: Path, log_dir: Path, run_id: str) -> str:
    """Copy the last state checkpoint of another local run into this run, for ``init_from``.

    Returns the state path to load (weights only). Local paths are
    ``local://<run>/weights/<name>`` stored at ``<root>/<run>/<name>/state.pt``.
    """
    record = latest_state_checkpoint(source_run)
    if record is None or record.state_path is None:
        raise ConfigError(f"init_from: {source_run} has no state checkpoint to start from")
    prefix = "local://"
    source_run_id, _, name = record.state_path.removeprefix(prefix).partition("/weights/")
    if not record.state_path.startswith(prefix) or not name:
        raise ConfigError(f"init_from: {record.state_path} is not a local state checkpoint")
    source = source_run / "checkpoints" / source_run_id / name / "state.pt"
    target = log_dir / "checkpoints" / run_id / "init" / "state.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return f"{prefix}{run_id}/weights/init"


def source_run_id(source_run: Path) -> str | None:
    """The run id of another run directory (from its summary or config), for lineage."""
    summary = source_run / "summary.json"
    if summary.exists():
        run_id = json.loads(summary.read_text(encoding="utf-8")).get("run_id")
        return str(run_id) if run_id else None
    return source_run.name
