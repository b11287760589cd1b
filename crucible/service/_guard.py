"""The ASGI middleware in front of every route: auth, rate limit, body limit, request counts,
and the last word on unexpected errors.

It runs before routing so that a request without a valid token learns nothing about which
routes or runs exist, and a body over the limit is refused before it is read. It still
matches the route (without calling it) so every response, 401s included, is counted under
the route's name: label values come from a fixed set, never from the request.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Sequence

import anyio.to_thread
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._config import ServiceConfig
from ._errors import ApiError, json_response
from ._prometheus import ServiceStats
from ._ratelimit import RateLimiter
from ._tokens import TokenInfo, TokenStore

_log = logging.getLogger("crucible.service")

__all__ = ["WS_SUBPROTOCOL", "Guard", "token_of"]

# Browsers cannot set headers on a WebSocket: they offer the subprotocols
# ["crucible", "bearer.<token>"] instead, and the server answers with "crucible".
WS_SUBPROTOCOL = "crucible"
_BEARER_SUBPROTOCOL = "bearer."
_PUBLIC_PREFIXES = ("/static/",)
_PUBLIC_PATHS = frozenset({"/", "/healthz", "/favicon.ico", "/api/v1/openapi.json"})
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ANONYMOUS = TokenInfo("anonymous", read_only=False, created="")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _offered_token(scope: Scope) -> str | None:
    authorization = _header(scope, b"authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    if scope["type"] == "websocket":
        for protocol in scope.get("subprotocols", ()):
            if protocol.startswith(_BEARER_SUBPROTOCOL):
                return str(protocol[len(_BEARER_SUBPROTOCOL) :])
    return None


def token_of(scope: Scope) -> TokenInfo:
    """The token a guarded request was admitted with."""
    info: TokenInfo = scope["crucible.token"]
    return info


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: TokenStore | None,
        config: ServiceConfig,
        stats: ServiceStats,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.app = app
        self.routes = routes
        self.tokens = tokens
        self.config = config
        self.stats = stats
        self.limiter = (
            RateLimiter(config.rate_limit, config.rate_burst) if config.rate_limit else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _route_name(self, scope: Scope) -> str:
        """The name of the route `scope` would reach: the one taking its method, else the
        first with its path (one path may have a route per method), else "unmatched"."""
        partial: BaseRoute | None = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return str(getattr(route, "name", None) or "unmatched")
            if match is Match.PARTIAL and partial is None:
                partial = route
        return str(getattr(partial, "name", None) or "unmatched")

    async def _lookup(self, token: str) -> TokenInfo | None:
        """The token's owner. A cache miss reads SQLite in a worker thread: a locked token
        database delays the requests that need it, never the event loop."""
        assert self.tokens is not None
        hit, info = self.tokens.cached(token)
        if hit:
            return info
        try:
            return await anyio.to_thread.run_sync(self.tokens.lookup, token)
        except sqlite3.OperationalError:  # locked past the busy timeout, or unreadable
            _log.exception("token database unavailable")
            raise ApiError(
                503,
                "token_database_unavailable",
                "the token database is busy; retry shortly",
                headers={"Retry-After": "1"},
            ) from None

    async def _admit(self, scope: Scope) -> None:
        """Raise `ApiError` unless the request may go on; records the token in the scope."""
        path: str = scope["path"]
        if path in _PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES):
            scope["crucible.token"] = _ANONYMOUS
            return
        if self.tokens is None:
            info = _ANONYMOUS
            client = scope.get("client")
            key = f"ip:{client[0]}" if client else "anonymous"
        else:
            token = _offered_token(scope)
            if token is None:
                raise ApiError(
                    401,
                    "unauthorized",
                    "send 'Authorization: Bearer <token>' (create one with "
                    "`python -m crucible.serve token create --name NAME`)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            found = await self._lookup(token)
            if found is None:
                raise ApiError(
                    401,
                    "unauthorized",
                    "unknown or revoked token",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            info, key = found, f"token:{found.name}"
        if scope["type"] == "http" and info.read_only and scope["method"] not in _READ_METHODS:
            raise ApiError(403, "forbidden", f"token {info.name!r} is read-only")
        if self.limiter is not None:
            wait = self.limiter.check(key)
            if wait > 0:
                raise ApiError(
                    429,
                    "rate_limited",
                    f"more than {self.config.rate_limit:g} requests/s; retry in {wait:.2f} s",
                    headers={"Retry-After": RateLimiter.retry_after_header(wait)},
                )
        scope["crucible.token"] = info

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 500
        started = False

        async def send_counted(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        route = self._route_name(scope)
        try:
            try:
                await self._admit(scope)
                limit = self.config.max_body_bytes
                length = _header(scope, b"content-length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise _too_large(limit)
            except ApiError as error:
                await error.response()(scope, receive, send_counted)
                return
            await self.app(scope, _limited(receive, limit), send_counted)
        except ClientDisconnect:
            status = 499  # the client left (or was closed for sending too slowly): no answer
        except Exception:
            # Never the exception's text to the client: a request id it can quote, which
            # the log line (with the traceback) carries too. Answering here, instead of
            # letting the error reach the server, also keeps the connection alive.
            request_id = uuid.uuid4().hex
            _log.exception(
                "internal error, request id %s: %s %s", request_id, scope["method"], route
            )
            if started:
                return  # the response is under way: the server closes the connection
            response = json_response(
                {"error": "internal", "detail": "internal server error", "request_id": request_id},
                500,
                {"X-Request-Id": request_id},
            )
            await response(scope, receive, send_counted)
        finally:
            self.stats.count_request(scope["method"], route, status)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._admit(scope)
        except ApiError as error:
            # Refuse the handshake with a real HTTP status where the server supports it.
            if "websocket.http.response" in scope.get("extensions", {}):
                await receive()  # websocket.connect
                response = error.response()
                await send(
                    {
                        "type": "websocket.http.response.start",
                        "status": response.status_code,
                        "headers": response.raw_headers,
                    }
                )
                await send({"type": "websocket.http.response.body", "body": response.body})
            else:
                await send({"type": "websocket.close", "code": 4000 + error.status})
            self.stats.count_request("WS", self._route_name(scope), error.status)
            return
        self.stats.count_request("WS", self._route_name(scope), 101)
        await self.app(scope, receive, send)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "body_too_large", {"limit_bytes": limit, "problem": "request body is too large"}
    )


def _limited(receive: Receive, limit: int) -> Receive:
    """`receive` that raises 413 once the body grows past `limit` (for chunked bodies)."""
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return receive_limited
