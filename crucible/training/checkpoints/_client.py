"""CheckpointManagerClient: typed methods over a CheckpointManager's ref."""

from __future__ import annotations

import builtins
from typing import Any

from crucible.actors import ActorRef
from crucible.training.checkpoints._log import CheckpointRecord
from crucible.training.checkpoints._messages import (
    BestCheckpoint,
    CheckpointKind,
    DeleteCheckpoint,
    GetCheckpoint,
    GetResumePoint,
    LatestCheckpoint,
    ListCheckpoints,
    LoadForSampling,
    PruneCheckpoints,
    SaveCheckpoint,
)
from crucible.training.checkpoints._retention import Mode
from crucible.training.port import SamplingClient


class CheckpointManagerClient:
    """Typed methods over a CheckpointManager's ref (each one an actor call)."""

    def __init__(self, ref: ActorRef[Any], *, timeout: float | None = 60.0) -> None:
        self.ref = ref
        self._timeout = timeout

    async def save(
        self,
        step: int,
        metrics: dict[str, float] | None = None,
        kind: CheckpointKind = "state",
        final: bool = False,
        epoch: int | None = None,
        overwrite: bool = False,
    ) -> CheckpointRecord:
        """Save the checkpoint of ``step``; its name must be new (CheckpointExists) unless
        ``overwrite``."""
        message = SaveCheckpoint(step, metrics, kind, final, epoch, overwrite)
        return await self.ref.call(message, timeout=self._timeout)

    async def list(self) -> list[CheckpointRecord]:
        return await self.ref.call(ListCheckpoints(), timeout=self._timeout)

    async def latest(self) -> CheckpointRecord:
        return await self.ref.call(LatestCheckpoint(), timeout=self._timeout)

    async def get(self, name: str) -> CheckpointRecord:
        """The checkpoint named ``name`` (CheckpointNotFound if there is none)."""
        return await self.ref.call(GetCheckpoint(name), timeout=self._timeout)

    async def delete(self, name: str) -> CheckpointRecord:
        """Remove the checkpoint named ``name``, files and line; returns its record."""
        return await self.ref.call(DeleteCheckpoint(name), timeout=self._timeout)

    async def get_best(self, metric: str, mode: Mode = "min") -> CheckpointRecord:
        return await self.ref.call(BestCheckpoint(metric, mode), timeout=self._timeout)

    async def prune(
        self, keep: int, metric: str, mode: Mode = "min"
    ) -> builtins.list[CheckpointRecord]:
        return await self.ref.call(PruneCheckpoints(keep, metric, mode), timeout=self._timeout)

    async def load_for_sampling(self, name: str) -> SamplingClient:
        client: SamplingClient = await self.ref.call(LoadForSampling(name), timeout=self._timeout)
        return client

    async def resume_point(self) -> CheckpointRecord | None:
        return await self.ref.call(GetResumePoint(), timeout=self._timeout)
