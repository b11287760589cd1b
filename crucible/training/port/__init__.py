"""The training backend port: the TrainingBackend, SamplingClient and Tokenizer protocols in
Tinker's shape, the operation names, the errors, and the awaitable result of a submitted
operation, request ids and ApplyOnce (each request id applied at most once)."""

from crucible.training.port._apply_once import ApplyOnce, ApplyOnceSamplingClient, RequestRecord
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
    InvalidLossConfig,
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
from crucible.training.port._protocol import (
    SamplingClient,
    Tokenizer,
    TrainingBackend,
    loss_args,
)
from crucible.training.port._requests import (
    RequestForgotten,
    RequestId,
    RequestIdReused,
    applies_once,
    retries_itself,
)

__all__ = [
    "OPERATIONS",
    "ORDERED_READS",
    "REJECTED",
    "SAMPLER_OPERATIONS",
    "STATE_OPERATIONS",
    "ApplyOnce",
    "ApplyOnceSamplingClient",
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
    "InvalidLossConfig",
    "MissingChatTemplate",
    "ModelTooLarge",
    "OperationName",
    "RequestForgotten",
    "RequestId",
    "RequestIdReused",
    "RequestRecord",
    "SamplingClient",
    "Tokenizer",
    "TrainingBackend",
    "UnknownBaseModel",
    "UnsupportedLossFn",
    "applies_once",
    "loss_args",
    "retries_itself",
]
