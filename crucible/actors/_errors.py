"""The runtime's typed errors. Every message names the actor and says what to do about it."""

from __future__ import annotations


class ActorError(Exception):
    """Base class of every error raised by crucible.actors."""


class CallTimeout(ActorError, TimeoutError):
    """A call got no reply within its timeout. The actor may still process the request later;
    its late reply is dropped, never delivered to another caller."""


class ActorDead(ActorError):
    """The actor had stopped (or stopped before it got to this message)."""


class ActorCrashed(ActorError):
    """The handler for this call raised; the exception is chained as ``__cause__`` and the actor
    has stopped (its supervisor, if any, decides whether it restarts)."""


class CallToSelf(ActorError):
    """An actor called itself: the call could never be answered, so it fails at once."""


class MailboxFull(ActorError):
    """The mailbox was full and its overflow policy refused (or dropped) the message."""


class UnhandledMessage(ActorError, TypeError):
    """The actor has no handler for this message type."""


class NameTaken(ActorError):
    """A name is already registered to a live actor."""


class ActorInitFailed(ActorError):
    """``init()`` raised; the actor never started. The cause is chained."""


class RestartIntensityExceeded(ActorError):
    """A supervisor saw more restarts than ``max_restarts`` within ``max_seconds`` and gave up;
    its parent decides what happens next."""


class ChildNotFound(ActorError, KeyError):
    """No child with that id under this supervisor."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ChildAlreadyExists(ActorError):
    """A child with that id is already under this supervisor."""


class ChildRunning(ActorError):
    """The operation needs the child stopped first (``terminate_child``)."""
