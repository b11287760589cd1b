"""Training (layer 4): the TrainingBackend port in Tinker's shape, and fault injection.

The local torch backend lives in ``crucible.training.local`` so that importing this package
does not need torch (the ``local`` extra).
"""

from crucible.training._errors import (
    BackendClosed,
    BackendCrashed,
    BackendError,
    BackendOpFailed,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    CheckpointNotFound,
    InvalidCheckpointPath,
    InvalidDatum,
    UnknownBaseModel,
    UnsupportedLossFn,
)
from crucible.training._faulty import (
    FAULT_KINDS,
    FaultKind,
    FaultyBackend,
    FaultySamplingClient,
    InjectedFault,
    LatencyDistribution,
)
from crucible.training._futures import BackendFuture, DeferredResult
from crucible.training._protocol import SamplingClient, Tokenizer, TrainingBackend

__all__ = [
    "FAULT_KINDS",
    "BackendClosed",
    "BackendCrashed",
    "BackendError",
    "BackendFuture",
    "BackendOpFailed",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointMismatch",
    "CheckpointNotFound",
    "DeferredResult",
    "FaultKind",
    "FaultyBackend",
    "FaultySamplingClient",
    "InjectedFault",
    "InvalidCheckpointPath",
    "InvalidDatum",
    "LatencyDistribution",
    "SamplingClient",
    "Tokenizer",
    "TrainingBackend",
    "UnknownBaseModel",
    "UnsupportedLossFn",
]
