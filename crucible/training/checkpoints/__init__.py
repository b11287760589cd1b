"""A run's checkpoints: the CheckpointManager actor and ``checkpoints.jsonl``, its index in the
tinker-cookbook format (parsed here and nowhere else).

Most callers use ``CheckpointManagerClient``; the messages are for calling the actor's ref
directly (for example from synchronous code through ``crucible.embedded()``).
"""

from crucible.training.checkpoints._client import CheckpointManagerClient
from crucible.training.checkpoints._log import (
    CHECKPOINTS_FILE,
    CheckpointRecord,
    latest_state_checkpoint,
)
from crucible.training.checkpoints._manager import CheckpointManager, RetryPolicy
from crucible.training.checkpoints._messages import (
    BestCheckpoint,
    CheckpointKind,
    CheckpointMetricNotFound,
    GetResumePoint,
    InvalidStep,
    LatestCheckpoint,
    ListCheckpoints,
    LoadForSampling,
    NoCheckpoints,
    PruneCheckpoints,
    SaveCheckpoint,
)

__all__ = [
    "CHECKPOINTS_FILE",
    "BestCheckpoint",
    "CheckpointKind",
    "CheckpointManager",
    "CheckpointManagerClient",
    "CheckpointMetricNotFound",
    "CheckpointRecord",
    "GetResumePoint",
    "InvalidStep",
    "LatestCheckpoint",
    "ListCheckpoints",
    "LoadForSampling",
    "NoCheckpoints",
    "PruneCheckpoints",
    "RetryPolicy",
    "SaveCheckpoint",
    "latest_state_checkpoint",
]
