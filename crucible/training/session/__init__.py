"""The supervised training session: a Session actor that owns one backend incarnation, the
journal every incarnation shares (so a new one replays what a failed one left), and the
SessionClient callers use as a TrainingBackend."""

from crucible.training.session._actor import (
    OperationTimedOut,
    Session,
    SessionStatus,
    UnknownOperation,
)
from crucible.training.session._client import SessionClient, SessionSamplingClient
from crucible.training.session._journal import BackendFactory, Journal, Operation, TrainingFailed
from crucible.training.session._policy import RETRYABLE, SNAPSHOT_PREFIX, SessionRetry

__all__ = [
    "RETRYABLE",
    "SNAPSHOT_PREFIX",
    "BackendFactory",
    "Journal",
    "Operation",
    "OperationTimedOut",
    "Session",
    "SessionClient",
    "SessionRetry",
    "SessionSamplingClient",
    "SessionStatus",
    "TrainingFailed",
    "UnknownOperation",
]
