"""The behaviour a user writes: ``Actor[State]`` with ``init``, typed handlers and ``terminate``.

The machinery that runs it (mailbox, task, restarts) lives in ``_cell`` and ``_supervisor``;
an Actor only describes what to do with each message type.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, overload

import msgspec

from ._mailbox import OVERFLOW_POLICIES, Overflow
from ._reason import ExitReason, crashed

if TYPE_CHECKING:
    from ._cell import Cell
    from ._ref import ActorRef
    from ._runtime import Runtime
    from ._timers import Timer

State = TypeVar("State")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

_HANDLES = "__crucible_handles__"
_INFER = object()


class Request(msgspec.Struct, Generic[R], frozen=True):
    """Base for call messages whose reply type is ``R``: ``ref.call(Get())`` is then typed."""


@overload
def handler(fn: F, /) -> F: ...
@overload
def handler(*, message: type[msgspec.Struct]) -> Callable[[F], F]: ...
def handler(
    fn: F | None = None, /, *, message: type[msgspec.Struct] | None = None
) -> F | Callable[[F], F]:
    """Mark a method as the handler of one message type.

    The type is the annotation of the method's message parameter, or ``message=`` when given.
    The handler may be ``def`` or ``async def``; for a call, its return value is the reply.
    """

    def mark(f: F) -> F:
        setattr(f, _HANDLES, message if message is not None else _INFER)
        return f

    return mark(fn) if fn is not None else mark


def _message_type(cls: type, name: str, fn: Callable[..., Any], marked: object) -> type:
    if marked is not _INFER:
        assert isinstance(marked, type)
        return marked
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 2:
        raise TypeError(
            f"{cls.__name__}.{name}: a handler takes (self, message); "
            f"it has {len(params)} parameters"
        )
    try:
        hints = typing.get_type_hints(fn)
    except NameError as exc:
        raise TypeError(
            f"{cls.__name__}.{name}: cannot resolve the message annotation ({exc}); "
            f"define the message class at module level or pass @handler(message=Type)"
        ) from exc
    if params[1].name not in hints:
        raise TypeError(
            f"{cls.__name__}.{name}: annotate the message parameter with its type "
            f"or pass @handler(message=Type)"
        )
    annotation = typing.get_origin(hints[params[1].name]) or hints[params[1].name]
    if not isinstance(annotation, type):
        raise TypeError(f"{cls.__name__}.{name}: message annotation must be a class")
    return annotation


def _check_message_type(cls: type, name: str, message: type) -> None:
    if not (issubclass(message, msgspec.Struct) and message.__struct_config__.frozen):
        raise TypeError(
            f"{cls.__name__}.{name} handles {message.__name__}, which is not a frozen "
            f"msgspec.Struct; declare it as `class {message.__name__}(msgspec.Struct, "
            f"frozen=True)`"
        )


HandlerEntry = tuple[Callable[..., Any], bool]  # (function, is_async)


class Actor(Generic[State]):
    """Subclass this, write ``async def init(self) -> State`` and ``@handler`` methods.

    ``self.state`` holds what ``init`` returned; handlers read and update it. A handler that
    raises crashes the actor (its caller gets ``ActorCrashed``); a supervisor may then start a
    fresh instance, which begins again from ``init``.

    Class attributes ``mailbox_size`` and ``overflow`` set the mailbox (``spawn`` can
    override); ``caller_errors`` lists exception types that go back to the caller instead of
    crashing the actor.
    """

    mailbox_size: ClassVar[int] = 1024
    overflow: ClassVar[Overflow] = "block"
    # Exceptions that mean "bad request", not "broken actor": raised by a handler, they are
    # raised in the caller (or logged, for a cast) and the actor keeps running.
    caller_errors: ClassVar[tuple[type[Exception], ...]] = ()
    _handlers: ClassVar[dict[type, HandlerEntry | None]] = {}

    state: State
    _cell: Cell | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.overflow not in OVERFLOW_POLICIES:
            raise TypeError(f"{cls.__name__}.overflow must be one of {OVERFLOW_POLICIES}")
        table: dict[type, HandlerEntry | None] = {}
        for klass in reversed(cls.__mro__):
            for name, fn in vars(klass).items():
                marked = getattr(fn, _HANDLES, None)
                if marked is None:
                    continue
                message = _message_type(klass, name, fn, marked)
                _check_message_type(klass, name, message)
                table[message] = (fn, inspect.iscoroutinefunction(fn))
        cls._handlers = table

    @classmethod
    def handler_for(cls, message_type: type) -> HandlerEntry | None:
        """The handler for a message type (or its nearest handled base class), cached."""
        table = cls._handlers
        if message_type in table:
            return table[message_type]
        entry = next((table[t] for t in message_type.__mro__[1:] if table.get(t)), None)
        table[message_type] = entry
        return entry

    async def init(self) -> State:
        """Build the initial state. Runs in the actor's task before any message."""
        return None  # type: ignore[return-value]

    async def terminate(self, reason: ExitReason, state: State) -> None:
        """Clean up. Runs when the actor stops for any reason but ``killed``; it has the
        child's shutdown timeout to finish before it is cancelled."""

    # -- available once running --------------------------------------------------------------

    @property
    def ref(self) -> ActorRef[Any]:
        return self._running_cell().ref

    @property
    def runtime(self) -> Runtime:
        return self._running_cell().runtime

    def send_after(self, delay: float, message: msgspec.Struct) -> Timer:
        """Deliver ``message`` to this actor as an info message after ``delay`` seconds.
        Cancelled when the actor stops; ``.cancel()`` the returned timer to cancel earlier."""
        return self._running_cell().start_timer(delay, message, interval=None)

    def send_interval(self, interval: float, message: msgspec.Struct) -> Timer:
        """Deliver ``message`` every ``interval`` seconds until cancelled or the actor stops."""
        return self._running_cell().start_timer(interval, message, interval=interval)

    def stop(self) -> None:
        """Stop normally after the current message (``terminate`` then runs with ``normal``)."""
        self._running_cell().request_stop(None)

    def crash(self, error: BaseException) -> None:
        """Crash after the current message, exactly as if a handler had raised ``error``
        (for failures noticed outside a handler, e.g. in a task from ``start_soon``)."""
        self._running_cell().request_stop(crashed(error))

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in a task owned by this actor: it is cancelled when the actor
        stops, and if it raises, the actor crashes with that error."""
        self._running_cell().start_linked_task(fn, *args)

    def _running_cell(self) -> Cell:
        if self._cell is None:
            raise RuntimeError(f"{type(self).__name__} is not running; spawn it first")
        return self._cell
