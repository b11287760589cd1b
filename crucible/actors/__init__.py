"""The actor runtime: actors, refs, supervisors, the name registry, embedding.

Erlang/OTP's gen_server and supervisor, on anyio (asyncio and trio). See docs/actors.md.
"""

from ._actor import Actor, Request, handler
from ._children import ChildCounts, ChildInfo, ChildSpec, RestartType
from ._embedded import EmbeddedRuntime, SyncActorRef, SyncSupervisorRef, embedded
from ._errors import (
    ActorCrashed,
    ActorDead,
    ActorError,
    ActorInitFailed,
    CallTimeout,
    CallToSelf,
    ChildAlreadyExists,
    ChildNotFound,
    ChildRunning,
    MailboxFull,
    NameTaken,
    RestartIntensityExceeded,
    UnhandledMessage,
)
from ._loop import wait_thread_future
from ._mailbox import Overflow
from ._reason import ExitReason
from ._ref import ActorRef
from ._restart import Backoff, RestartIntensity
from ._runtime import NamedRef, Runtime, RuntimeEvent, open_runtime
from ._supervisor import Strategy, Supervisor, SupervisorRef
from ._timers import Timer

__all__ = [
    "Actor",
    "ActorCrashed",
    "ActorDead",
    "ActorError",
    "ActorInitFailed",
    "ActorRef",
    "Backoff",
    "CallTimeout",
    "CallToSelf",
    "ChildAlreadyExists",
    "ChildCounts",
    "ChildInfo",
    "ChildNotFound",
    "ChildRunning",
    "ChildSpec",
    "EmbeddedRuntime",
    "ExitReason",
    "MailboxFull",
    "NameTaken",
    "NamedRef",
    "Overflow",
    "Request",
    "RestartIntensity",
    "RestartIntensityExceeded",
    "RestartType",
    "Runtime",
    "RuntimeEvent",
    "Strategy",
    "Supervisor",
    "SupervisorRef",
    "SyncActorRef",
    "SyncSupervisorRef",
    "Timer",
    "UnhandledMessage",
    "embedded",
    "handler",
    "open_runtime",
    "wait_thread_future",
]
