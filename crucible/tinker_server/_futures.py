"""Results of accepted requests, retrieved by long-polling ``POST /retrieve_future``.

Every mutating call is answered at once with a request id; its result (JSON, protobuf, or an
``{"error", "category"}`` body) lands here when the work is done. A poll waits on an event for
up to the long-poll time: the SDK re-polls immediately after ``try_again``, so answering at
once would make it spin.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import anyio
import attrs
import pydantic

ErrorCategory = Literal["user", "server", "unknown"]


@attrs.frozen
class Outcome:
    body: bytes
    media_type: str

    @classmethod
    def json(cls, payload: dict[str, Any]) -> Outcome:
        return cls(json.dumps(payload).encode(), "application/json")

    @classmethod
    def failed(cls, message: str, category: ErrorCategory) -> Outcome:
        # The SDK treats any body with an "error" key as a failed request.
        return cls.json({"error": message, "category": category})


def sdk_json(kind: str | None) -> Callable[[pydantic.BaseModel], Outcome]:
    """Encodes an SDK response as JSON, tagged ``"type": kind`` when the SDK expects one."""

    def encode(result: pydantic.BaseModel) -> Outcome:
        payload = result.model_dump(mode="json", exclude_none=True)
        if kind is not None:
            payload["type"] = kind
        return Outcome.json(payload)

    return encode


class Pending:
    """One accepted request: done once its outcome is set (exactly once)."""

    __slots__ = ("_done", "outcome", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.outcome: Outcome | None = None
        self._done = anyio.Event()

    def resolve(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self._done.set()

    async def wait(self, timeout: float) -> Outcome | None:
        with anyio.move_on_after(timeout):
            await self._done.wait()
        return self.outcome


_REQUEST_ID = re.compile(r"req-([0-9a-f]{8})-[0-9]+")


class FutureTable:
    """Request ids to pending results; the oldest finished ones are forgotten past ``limit``
    (a client re-polling a forgotten id gets 410, which the SDK treats as a lost promise).

    Ids are ``req-<boot>-<n>`` with a random ``boot`` per server process, so after a restart an
    id of the old process is recognised as such (``from_earlier_boot``) and never mistaken for
    a new request that happens to have the same number."""

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._entries: OrderedDict[str, Pending] = OrderedDict()
        self._ids = itertools.count(1)
        self.boot = secrets.token_hex(4)

    def from_earlier_boot(self, request_id: str) -> bool:
        match = _REQUEST_ID.fullmatch(request_id)
        return match is not None and match.group(1) != self.boot

    def new(self) -> Pending:
        pending = Pending(f"req-{self.boot}-{next(self._ids)}")
        self._entries[pending.request_id] = pending
        while len(self._entries) > self._limit:
            oldest_id, oldest = next(iter(self._entries.items()))
            if oldest.outcome is None:
                break  # never forget unfinished work
            del self._entries[oldest_id]
        return pending

    def get(self, request_id: str) -> Pending | None:
        return self._entries.get(request_id)
