"""Request ids: what lets a caller send a failed operation again without applying it twice.

Every operation a session submits carries a request id, an integer that grows in submission
order (the session's journal sequence number). A backend that *applies once* (``ApplyOnce``,
or a server that keeps a record, as Tinker does for its sequence ids) applies each id at most
once and answers a repeat with the stored result, so an operation whose answer was lost in
transit can be sent again with its id: either it was applied and the record answers, or it
never arrived and is applied now, in its place.

A backend tells the session how failures may be handled with two optional attributes:

- ``applies_once = True``: its operations take ``request_id=`` and honour it as above; the
  session retries any failed operation in place.
- ``retries_itself = True``: its client already retried the request (the Tinker SDK retries
  connection errors and 408/409/429/5xx for minutes with the same sequence id); a failure that
  reaches the session is final for that request, so the session never retries it again.

A backend with neither keeps the old rule: only position-independent reads are retried; any
other failed operation restarts the session, which replays from the last checkpoint.
"""

from __future__ import annotations

from typing import Any

from crucible.training.port._errors import BackendError

RequestId = int
"""The id of one submitted operation: unique per backend, growing in submission order."""


class RequestForgotten(BackendError):
    """A repeated request id that the backend has no record of any more, while requests after
    it were applied: answering it would apply it twice or out of order. The caller must treat
    the backend as lost (restore the last checkpoint and replay)."""


class RequestIdReused(BackendError, ValueError):
    """A request id was sent again for a different operation (a caller's bug)."""


def applies_once(backend: Any) -> bool:
    """Whether ``backend``'s operations take ``request_id=`` and apply each id at most once."""
    return getattr(backend, "applies_once", False) is True


def retries_itself(backend: Any) -> bool:
    """Whether ``backend``'s client already retried every failure that reaches its caller."""
    return getattr(backend, "retries_itself", False) is True
