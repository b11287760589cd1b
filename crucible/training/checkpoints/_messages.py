"""The CheckpointManager's messages and the errors it sends back to callers."""

from __future__ import annotations

from typing import Any, Literal

from crucible.actors import Request
from crucible.training.checkpoints._log import CheckpointRecord
from crucible.training.checkpoints._retention import Mode

CheckpointKind = Literal["state", "sampler", "both"]


class InvalidStep(ValueError):
    """A checkpoint step must be an integer >= 0."""


class NoCheckpoints(LookupError):
    """The run has no checkpoint (of the kind asked for) yet."""


class CheckpointMetricNotFound(LookupError):
    """No checkpoint carries the metric asked for."""


class CheckpointExists(FileExistsError):
    """A checkpoint of that name is already saved; save with ``overwrite=True`` to replace it.
    ``existing`` is its record."""

    def __init__(self, message: str, existing: CheckpointRecord) -> None:
        super().__init__(message)
        self.existing = existing


class SaveCheckpoint(Request[CheckpointRecord], frozen=True):
    step: int
    metrics: dict[str, float] | None = None
    kind: CheckpointKind = "state"
    final: bool = False
    epoch: int | None = None
    overwrite: bool = False


class ListCheckpoints(Request[list[CheckpointRecord]], frozen=True):
    pass


class LatestCheckpoint(Request[CheckpointRecord], frozen=True):
    pass


class GetCheckpoint(Request[CheckpointRecord], frozen=True):
    name: str


class DeleteCheckpoint(Request[CheckpointRecord], frozen=True):  # replies with what it removed
    name: str


class BestCheckpoint(Request[CheckpointRecord], frozen=True):
    metric: str
    mode: Mode = "min"


class PruneCheckpoints(Request[list[CheckpointRecord]], frozen=True):
    keep: int
    metric: str
    mode: Mode = "min"


class LoadForSampling(Request[Any], frozen=True):  # replies with a SamplingClient
    name: str


class GetResumePoint(Request[CheckpointRecord | None], frozen=True):
    pass
