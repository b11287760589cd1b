"""How the service is served by uvicorn: settings plus deadlines on slow clients.

uvicorn closes an idle keep-alive connection, but a client that opens a connection and then
trickles its request headers (or body) a byte at a time holds it, and its file descriptor,
forever: a few hundred such clients exhaust the server ("slowloris"). `_TimedH11Protocol`
gives every request a deadline for its headers, counted from the moment the connection
could send one (opened, or the previous response finished), and one for its body, counted
from the end of the headers; a connection that misses either is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ._config import ServiceConfig

__all__ = ["server_config"]


class _TimedH11Protocol(H11Protocol):
    header_timeout = 10.0
    body_timeout = 60.0

    _deadline: asyncio.TimerHandle | None = None
    _deadline_state: type[h11.IDLE] | type[h11.SEND_BODY] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def handle_events(self) -> None:
        super().handle_events()
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Arm the deadline for what the client must send next (none once it sent it all)."""
        state = self.conn.their_state
        if state is self._deadline_state:
            return  # the same phase goes on: its deadline stands (trickling buys no time)
        self._cancel()
        if self.transport.is_closing() or state not in (h11.IDLE, h11.SEND_BODY):
            return
        timeout = self.header_timeout if state is h11.IDLE else self.body_timeout
        self._deadline_state = state
        self._deadline = self.loop.call_later(timeout, self._expired)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._deadline_state = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.get_protocol() is not self or self.transport.is_closing():
            return  # upgraded to a WebSocket, or closing anyway
        phase = "headers" if self._deadline_state is h11.IDLE else "body"
        self.logger.info("closing a connection that sent its request %s too slowly", phase)
        self._deadline_state = None
        self.transport.close()


def _protocol(config: ServiceConfig) -> type[H11Protocol]:
    return type(
        "TimedH11Protocol",
        (_TimedH11Protocol,),
        {"header_timeout": config.header_timeout, "body_timeout": config.body_timeout},
    )


def server_config(app: Any, *, host: str, port: int, **options: Any) -> Any:
    """A `uvicorn.Config` serving `app` (from `create_app`) with its `ServiceConfig`'s
    deadlines; `options` go to uvicorn as they are (log_level, lifespan...)."""
    import uvicorn

    config: ServiceConfig = app.state.config
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_protocol(config),
        ws="websockets-sansio",
        access_log=False,
        **options,
    )
