"""Errors raised by training backends. Each message names the problem and what to do."""

from __future__ import annotations

from typing import Final


class BackendError(Exception):
    """Base class of every error a training backend raises."""


class BackendOpFailed(BackendError):
    """A backend operation failed; it may or may not have been applied.

    A caller cannot tell, so a state-changing operation must not be retried blindly: restore
    the last checkpoint and replay instead. Idempotent operations may be retried.
    """


class BackendCrashed(BackendError):
    """The backend object is unusable; build a new one and restore the last checkpoint."""


class BackendClosed(BackendError):
    """The backend was closed; no further operation is accepted."""


class UnknownBaseModel(BackendError, ValueError):
    """The base model name is not one this backend knows."""


class InvalidDatum(BackendError, ValueError):
    """A Datum does not fit the model or the loss function (shape, length, token ids)."""


class UnsupportedLossFn(BackendError, ValueError):
    """The loss function is not implemented by this backend."""


class InvalidLossConfig(BackendError, ValueError):
    """``loss_fn_config`` names a key the loss function does not take, or a value outside its
    range (a clip threshold below zero, a negative ``beta``, text where a number belongs)."""


class CheckpointError(BackendError):
    """A checkpoint could not be saved or loaded."""


class InvalidCheckpointPath(CheckpointError, ValueError):
    """The path is not of the form this backend writes (for example ``local://run/weights/x``)."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No checkpoint exists at the path."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint belongs to another base model, LoRA configuration or shape."""


class CheckpointCorrupt(CheckpointError):
    """The checkpoint file exists but cannot be read (truncated, garbled, wrong format)."""


#: Errors that mean the request itself was refused: the backend applied nothing, so retrying or
#: replaying it would fail the same way; the error belongs to whoever asked.
REJECTED: Final[tuple[type[BackendError], ...]] = (
    InvalidDatum,
    UnsupportedLossFn,
    InvalidLossConfig,
    CheckpointNotFound,
    CheckpointMismatch,
    CheckpointCorrupt,
    InvalidCheckpointPath,
)


class InvalidBaseModel(UnknownBaseModel):
    """The base model was found but cannot be used: a directory without a config or a
    tokenizer, or an architecture that is not a causal language model."""


class InvalidLoraTarget(BackendError, ValueError):
    """The LoRA target modules name modules the base model's architecture does not have."""


class ModelTooLarge(BackendError, ValueError):
    """The base model needs more memory than the device has free."""


class MissingChatTemplate(BackendError, ValueError):
    """The tokenizer has no chat template, and the renderer asked for it."""
