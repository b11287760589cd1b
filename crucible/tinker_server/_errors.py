"""How failures become answers the Tinker SDK understands."""

from __future__ import annotations

from crucible.tinker_server._futures import ErrorCategory
from crucible.tinker_server._wire import BadTensor
from crucible.training import (
    CheckpointError,
    InvalidDatum,
    UnknownBaseModel,
    UnsupportedLossFn,
)


class ServiceError(Exception):
    """Answered at once with ``status`` and ``{"detail": message}`` (never an empty body: the
    SDK takes an empty 400 for a proxy rejection and reconnects). 4xx statuses other than
    408/409/429 are final for the SDK; it retries 5xx."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_USER_ERRORS = (
    InvalidDatum,
    UnsupportedLossFn,
    CheckpointError,
    UnknownBaseModel,
    BadTensor,
    ValueError,
)


def category(error: BaseException) -> ErrorCategory:
    """``user`` for a bad request (the client should not retry it), else ``server``."""
    return "user" if isinstance(error, _USER_ERRORS) else "server"


def describe(error: BaseException) -> str:
    """The exception's class name first, so a client can tell the kinds apart."""
    return f"{type(error).__name__}: {error}"
