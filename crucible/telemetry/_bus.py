"""The event bus: execute / attach / attach_many / detach / span.

The handler table below is the one piece of global mutable state Crucible allows: emitters
anywhere (a training loop, an actor, a recipe stage) reach the handlers without being handed a
reference. Handlers are plain synchronous callables run in the emitter's thread, in attach
order, so a handler must be quick: anything slow belongs in an actor the handler casts to.

Event names are dotted strings (``crucible_train.batch.stop``). A handler subscribes to exact
names, to ``"prefix.*"`` (every name below the prefix) or to ``"*"`` (every event).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs

from crucible.telemetry._errors import DuplicateHandler

__all__ = [
    "HandlerFn",
    "HandlerInfo",
    "attach",
    "attach_many",
    "detach",
    "execute",
    "list_handlers",
    "span",
]

log = logging.getLogger("crucible.telemetry")

#: A handler receives (event_name, measurements, metadata, config).
HandlerFn = Callable[[str, Mapping[str, Any], Mapping[str, Any], Any], None]

_EMPTY: Mapping[str, Any] = {}


@attrs.frozen
class HandlerInfo:
    """One attached handler, as ``list_handlers()`` reports it."""

    handler_id: str
    events: tuple[str, ...]
    fn: HandlerFn
    config: Any

    def matches(self, event_name: str) -> bool:
        for pattern in self.events:
            if pattern == event_name or pattern == "*":
                return True
            if pattern.endswith(".*") and event_name.startswith(pattern[:-1]):
                return True
        return False


# --- the global handler table (guarded by _lock; _by_event is a cache rebuilt lazily) ---
_lock = threading.Lock()
_handlers: dict[str, HandlerInfo] = {}
# event name -> ((fn, config, info), ...): execute's hot path reads one dict and unpacks tuples.
_by_event: dict[str, tuple[tuple[HandlerFn, Any, HandlerInfo], ...]] = {}


def _check_event_name(name: str) -> None:
    if not isinstance(name, str) or not name or name.startswith(".") or name.endswith("."):
        raise ValueError(f"event names are non-empty dotted strings, got {name!r}")


def attach(
    handler_id: str,
    events: str | Iterable[str],
    fn: HandlerFn,
    config: Any = None,
) -> None:
    """Call ``fn(event_name, measurements, metadata, config)`` for every matching event.

    ``events`` is one pattern or several: an exact name, ``"prefix.*"`` or ``"*"``.
    Raises DuplicateHandler if ``handler_id`` is already attached.
    """
    patterns = (events,) if isinstance(events, str) else tuple(events)
    if not patterns:
        raise ValueError(f"handler {handler_id!r} must subscribe to at least one event")
    for pattern in patterns:
        _check_event_name(pattern)
    info = HandlerInfo(handler_id, patterns, fn, config)
    with _lock:
        if handler_id in _handlers:
            raise DuplicateHandler(handler_id)
        _handlers[handler_id] = info
        _by_event.clear()


def attach_many(
    handler_id: str,
    events: Iterable[str],
    fn: HandlerFn,
    config: Any = None,
) -> None:
    """``attach`` with a list of event names (kept for the :telemetry-style API)."""
    attach(handler_id, tuple(events), fn, config)


def detach(handler_id: str) -> bool:
    """Remove a handler; returns False if no handler had this id."""
    with _lock:
        removed = _handlers.pop(handler_id, None)
        if removed is not None:
            _by_event.clear()
    return removed is not None


def list_handlers(event_name: str | None = None) -> tuple[HandlerInfo, ...]:
    """Every attached handler, or those an event of this name would reach."""
    with _lock:
        infos = tuple(_handlers.values())
    if event_name is None:
        return infos
    return tuple(info for info in infos if info.matches(event_name))


#: Names are usually a fixed vocabulary; a program minting names (ids inside them) would grow
#: the cache without bound, so it is dropped and rebuilt past this size.
_CACHE_LIMIT = 4096


def _resolve(event_name: str) -> tuple[tuple[HandlerFn, Any, HandlerInfo], ...]:
    with _lock:
        if len(_by_event) >= _CACHE_LIMIT:
            _by_event.clear()
        found = tuple(
            (info.fn, info.config, info) for info in _handlers.values() if info.matches(event_name)
        )
        _by_event[event_name] = found
    return found


def _detach_failed(info: HandlerInfo, event_name: str) -> None:
    # Detach only this incarnation: if the id was re-attached meanwhile, leave the new one.
    with _lock:
        if _handlers.get(info.handler_id) is info:
            del _handlers[info.handler_id]
            _by_event.clear()
            detached = True
        else:
            detached = False
    if detached:
        log.exception(
            "telemetry handler %r raised on event %r and was detached",
            info.handler_id,
            event_name,
        )


def execute(
    event_name: str,
    measurements: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Emit one event to every matching handler, synchronously, in attach order.

    A handler that raises is detached and logged once; the emitter never sees its error.
    """
    handlers = _by_event.get(event_name)
    if handlers is None:
        handlers = _resolve(event_name)
    if not handlers:
        return
    measured = _EMPTY if measurements is None else measurements
    meta = _EMPTY if metadata is None else metadata
    for fn, config, info in handlers:
        try:
            fn(event_name, measured, meta, config)
        except Exception:
            _detach_failed(info, event_name)


@contextmanager
def span(event_prefix: str, metadata: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Time a block: emit ``prefix.start``, then ``prefix.stop`` or ``prefix.exception``.

    ``.start`` carries ``system_time`` (ns since the epoch) and ``monotonic_time`` (ns);
    ``.stop`` and ``.exception`` carry ``duration`` (ns, monotonic). ``.exception``'s metadata
    adds ``kind`` (the exception's type name) and ``reason`` (its message); the exception is
    re-raised unchanged. The block receives a dict it may fill with extra metadata for the
    closing event (a response, token counts, ...).
    """
    _check_event_name(event_prefix)
    base = dict(metadata or {})
    start = time.monotonic_ns()
    execute(
        f"{event_prefix}.start",
        {"system_time": time.time_ns(), "monotonic_time": start},
        base,
    )
    extra: dict[str, Any] = {}
    try:
        yield extra
    except BaseException as exc:
        # BaseException too: a cancelled block still closes its span, then cancellation goes on.
        end = time.monotonic_ns()
        execute(
            f"{event_prefix}.exception",
            {"duration": end - start, "monotonic_time": end},
            {**base, **extra, "kind": type(exc).__name__, "reason": str(exc)},
        )
        raise
    end = time.monotonic_ns()
    execute(
        f"{event_prefix}.stop",
        {"duration": end - start, "monotonic_time": end},
        {**base, **extra},
    )
