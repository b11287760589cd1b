"""Tinker SDK failures as Crucible's error types.

A request the server refused (bad data, unknown checkpoint) becomes the error that names the
problem and changed nothing; any other failure of an operation becomes BackendOpFailed: it may
or may not have been applied.
"""

from __future__ import annotations

from typing import Final

import tinker
from tinker import types

from crucible.training.port import (
    REJECTED,
    BackendCrashed,
    BackendError,
    BackendOpFailed,
    CheckpointNotFound,
    InvalidCheckpointPath,
    InvalidDatum,
    UnknownBaseModel,
)

#: Operations whose 404 means "no such checkpoint" rather than "no such model".
_PATH_OPS: Final = frozenset({"load_state", "sampling_client", "delete_checkpoint", "create"})
#: Errors a server names in its message (the local server puts the class name first); each
#: means the request was refused and nothing was applied.
NAMED_ERRORS: Final[tuple[type[BackendError], ...]] = (*REJECTED, UnknownBaseModel)


class TinkerAuthError(BackendError):
    """The Tinker service refused the API key (or none was found)."""


def _named_error(message: str) -> type[BackendError] | None:
    for error_type in NAMED_ERRORS:
        if error_type.__name__ in message:
            return error_type
    return None


def crucible_error(op: str, error: BaseException) -> BackendError:
    """The Crucible error for an SDK failure of ``op``."""
    if isinstance(error, BackendError):
        return error
    message = f"{op} failed on Tinker: {type(error).__name__}: {error}"
    if isinstance(error, (tinker.AuthenticationError, tinker.PermissionDeniedError)):
        return TinkerAuthError(f"{message}; check TINKER_API_KEY (or api_key=)")
    if isinstance(error, tinker.TinkerError) and "API key" in str(error):
        return TinkerAuthError(f"{message}; set TINKER_API_KEY (or api_key=)")
    # A 404 for the model itself means the server no longer knows this client: it is lost.
    unknown_model = isinstance(error, tinker.NotFoundError) and op not in _PATH_OPS
    rejected = (
        isinstance(error, tinker.RequestFailedError)
        and error.category == types.RequestErrorCategory.User
    ) or (
        isinstance(error, tinker.APIStatusError)
        and error.status_code in (400, 404, 413, 422)
        and not unknown_model
    )
    if rejected:
        named = _named_error(str(error))
        if named is not None:
            return named(message)
        if op in ("forward_backward", "forward"):
            return InvalidDatum(message)
        if op == "create":
            return UnknownBaseModel(message)
        if op in _PATH_OPS:
            not_found = isinstance(error, tinker.NotFoundError)
            return (CheckpointNotFound if not_found else InvalidCheckpointPath)(message)
        return BackendOpFailed(message)
    if isinstance(error, ValueError) and op in ("forward_backward", "forward"):
        return InvalidDatum(message)  # the SDK's own checks, before anything is sent
    if isinstance(error, RuntimeError) and "poisoned" in str(error):
        return BackendCrashed(f"{message}; build a new backend from the last checkpoint")
    # Connection errors and 5xx after the SDK's own retries, a failed promise (server or
    # unknown category), a lost promise: the request may or may not have been applied.
    return BackendOpFailed(f"{message}; it may or may not have been applied")
