"""A run's checkpoints: the CheckpointManager actor and ``checkpoints.jsonl``, its index in the
tinker-cookbook format (parsed here and nowhere else), the rules of what is kept
(``_retention``), and the choice of the checkpoint a resumed run loads (``prepare_resume``,
which passes over damaged checkpoints).

Most callers use ``CheckpointManagerClient``; the messages are for calling the actor's ref
directly (for example from synchronous code through ``crucible.embedded()``).
"""

from crucible.training.checkpoints._client import CheckpointManagerClient
from crucible.training.checkpoints._log import CHECKPOINTS_FILE, CheckpointRecord
from crucible.training.checkpoints._manager import CheckpointManager, RetryPolicy
from crucible.training.checkpoints._messages import (
    BestCheckpoint,
    CheckpointExists,
    CheckpointKind,
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
from crucible.training.checkpoints._resume import (
    DamagedCheckpoint,
    ResumePoint,
    Verify,
    latest_state_checkpoint,
    latest_verified_state_checkpoint,
    prepare_resume,
)
from crucible.training.checkpoints._retention import BestBy, Mode

__all__ = [
    "CHECKPOINTS_FILE",
    "BestBy",
    "BestCheckpoint",
    "CheckpointExists",
    "CheckpointKind",
    "CheckpointManager",
    "CheckpointManagerClient",
    "CheckpointMetricNotFound",
    "CheckpointRecord",
    "DamagedCheckpoint",
    "DeleteCheckpoint",
    "GetCheckpoint",
    "GetResumePoint",
    "InvalidStep",
    "LatestCheckpoint",
    "ListCheckpoints",
    "LoadForSampling",
    "Mode",
    "NoCheckpoints",
    "PruneCheckpoints",
    "ResumePoint",
    "RetryPolicy",
    "SaveCheckpoint",
    "Verify",
    "latest_state_checkpoint",
    "latest_verified_state_checkpoint",
    "prepare_resume",
]
