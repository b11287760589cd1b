"""CheckpointManagerClient: typed methods over a CheckpointManager's ref."""

from __future__ import annotations

import builtins
from typing import Any

from crucible.actors import ActorRef
from crucible.training.checkpoints._log import CheckpointRecord
from crucible.training.checkpoints._messages import (
    BestCheckpoint,
    CheckpointKind,
    GetResumePoint,
    LatestCheckpoint,
    ListCheckpoints,
    LoadForSampling,
    Mode,
    PruneCheckpoints,
    SaveCheckpoint,
)
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
    ) -> CheckpointRecord:
        message = SaveCheckpoint(step, metrics, kind, final, epoch)
        return await self.ref.call(message, timeout=self._timeout)

    async def list(self) -> list[CheckpointRecord]:
        return await self.ref.call(ListCheckpoints(), timeout=self._timeout)

    async def latest(self) -> CheckpointRecord:
        return await self.ref.call(LatestCheckpoint(), timeout=self._timeout)

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
