"""The ASGI middleware in front of every route: auth, rate limit, body limit, request counts.

It runs before routing so that a request without a valid token learns nothing about which
routes or runs exist, and a body over the limit is refused before it is read.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._config import ServiceConfig
from ._errors import ApiError
from ._prometheus import ServiceStats
from ._ratelimit import RateLimiter
from ._tokens import TokenInfo, TokenStore

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
    ) -> None:
        self.app = app
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

    def _admit(self, scope: Scope) -> None:
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
            found = self.tokens.lookup(token)
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

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            try:
                self._admit(scope)
                limit = self.config.max_body_bytes
                length = _header(scope, b"content-length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise _too_large(limit)
            except ApiError as error:
                await error.response()(scope, receive, send_counted)
                return
            await self.app(scope, _limited(receive, limit), send_counted)
        finally:
            endpoint: Any = scope.get("endpoint")
            route = getattr(endpoint, "__name__", "unmatched")
            self.stats.count_request(scope["method"], route, status)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._admit(scope)
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
            self.stats.count_request("WS", "ws_metrics", error.status)
            return
        self.stats.count_request("WS", "ws_metrics", 101)
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
