"""The training backend port: the TrainingBackend, SamplingClient and Tokenizer protocols in
Tinker's shape, the operation names, the errors, and the awaitable result of a submitted
operation."""

from crucible.training.port._closing import AsyncClosing
from crucible.training.port._errors import (
    REJECTED,
    BackendClosed,
    BackendCrashed,
    BackendError,
    BackendOpFailed,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    CheckpointNotFound,
    InvalidBaseModel,
    InvalidCheckpointPath,
    InvalidDatum,
    InvalidLoraTarget,
    MissingChatTemplate,
    ModelTooLarge,
    UnknownBaseModel,
    UnsupportedLossFn,
)
from crucible.training.port._futures import BackendFuture, DeferredResult
from crucible.training.port._operations import (
    OPERATIONS,
    ORDERED_READS,
    SAMPLER_OPERATIONS,
    STATE_OPERATIONS,
    OperationName,
)
from crucible.training.port._protocol import SamplingClient, Tokenizer, TrainingBackend

__all__ = [
    "OPERATIONS",
    "ORDERED_READS",
    "REJECTED",
    "SAMPLER_OPERATIONS",
    "STATE_OPERATIONS",
    "AsyncClosing",
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
    "InvalidBaseModel",
    "InvalidCheckpointPath",
    "InvalidDatum",
    "InvalidLoraTarget",
    "MissingChatTemplate",
    "ModelTooLarge",
    "OperationName",
    "SamplingClient",
    "Tokenizer",
    "TrainingBackend",
    "UnknownBaseModel",
    "UnsupportedLossFn",
]
