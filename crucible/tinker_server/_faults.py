"""Fault mode: an unreliable Tinker service, reproducible under a seed.

Each request (in arrival order) draws from one ``random.Random(seed)``. With probability
``rate`` it fails with one of the kinds, either *before* the server handles it (nothing was
applied) or *after* (the work was applied, only the answer is lost):

``500`` / ``503`` / ``429``
    that status with a JSON body and ``retry-after-ms`` (the SDK retries all three);
``drop``
    the response starts and the connection is cut mid-body (the SDK sees a connection error).

"After" faults are safe because every mutating endpoint recognises a resubmitted request
(same seq_id, idempotency key or creation counter) and answers with the first request id, so a
run under faults ends with the same weights as a run without.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Final

import attrs
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_WHEN: Final = ("before", "after")


class DroppedConnection(Exception):
    """Raised after the response started, which makes the server cut the connection."""


@attrs.frozen
class InjectedServerFault:
    index: int
    path: str
    kind: str
    when: str


class FaultInjector:
    def __init__(
        self,
        app: ASGIApp,
        *,
        rate: float,
        seed: int,
        kinds: Sequence[str],
        retry_after_ms: int,
        exempt: Collection[str] = (),
        log: list[InjectedServerFault] | None = None,
    ) -> None:
        self.app = app
        self.rate = rate
        self.rng = random.Random(seed)
        self.kinds = tuple(kinds)
        self.retry_after_ms = retry_after_ms
        self.exempt = frozenset(exempt)
        self.count = 0
        self.injected: list[InjectedServerFault] = log if log is not None else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        index = self.count
        self.count += 1
        roll, kind, when = self.rng.random(), self.rng.choice(self.kinds), self.rng.choice(_WHEN)
        if roll >= self.rate:
            await self.app(scope, receive, send)
            return
        self.injected.append(InjectedServerFault(index, scope["path"], kind, when))
        if when == "after":
            await self.app(scope, receive, _discard)
        await self._fail(kind, scope, receive, send)

    async def _fail(self, kind: str, scope: Scope, receive: Receive, send: Send) -> None:
        if kind == "drop":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"', "more_body": True})
            raise DroppedConnection("fault mode: connection dropped mid-response")
        response = JSONResponse(
            {"detail": f"fault mode: injected {kind}"},
            status_code=int(kind),
            headers={"retry-after-ms": str(self.retry_after_ms)},
        )
        await response(scope, receive, send)


async def _discard(_message: Message) -> None:
    """The send of a request whose answer is lost."""
