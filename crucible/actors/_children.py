"""What a supervisor is told about each child (ChildSpec) and what it reports back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import attrs

from ._actor import Actor
from ._mailbox import Overflow
from ._ref import ActorRef

RestartType = Literal["permanent", "transient", "temporary"]
ChildStatus = Literal["running", "restarting", "stopped"]


def _one_of(choices: tuple[str, ...]) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {choices}, got {value!r}")

    return check


def _shutdown_ok(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"shutdown must be >= 0 seconds or None (wait forever), got {value}")


@attrs.frozen
class ChildSpec:
    """How to run one child. ``start`` returns a fresh Actor for every incarnation.

    ``restart``: ``permanent`` always comes back, ``transient`` only after an abnormal exit
    (crash or kill), ``temporary`` never. ``shutdown``: seconds the child gets to stop
    (``terminate``) before it is cancelled; 0 cancels at once, None waits forever (use it
    for nested supervisors). ``name`` registers every incarnation under that name.
    """

    id: str
    start: Callable[[], Actor[Any]]
    restart: RestartType = attrs.field(
        default="permanent", validator=_one_of(get_args(RestartType))
    )
    shutdown: float | None = attrs.field(default=5.0, validator=_shutdown_ok)
    name: str | None = None
    mailbox_size: int | None = None
    overflow: Overflow | None = None


@attrs.frozen
class ChildInfo:
    id: str
    ref: ActorRef[Any] | None
    status: ChildStatus
    restart: RestartType
    restarts: int
    supervisor: bool


@attrs.frozen
class ChildCounts:
    specs: int
    active: int
    supervisors: int
    workers: int
