"""The server's settings, shared by `python -m crucible.serve` and `create_app`."""

from __future__ import annotations

import attrs

__all__ = ["ServiceConfig"]


@attrs.frozen
class ServiceConfig:
    """Limits of one server (whether tokens are required is `create_app`'s `tokens`).

    - `rate_limit` requests/s per token on average, `rate_burst` at once.
    - `max_body_bytes`: larger request bodies get 413 before they are read.
    - `max_batch`: points per `POST /metrics/batch` (more get 413).
    - `ws_queue`: messages a WebSocket subscriber may fall behind before it is dropped.
    - `max_page`: the largest `limit` (and `max_points`) a read accepts.
    - `heartbeat_timeout`: seconds without a heartbeat (or points) after which a running
      run reads as crashed.
    - `header_timeout`: seconds a connection has to send a request's headers (from when
      it opened or the last response ended); `body_timeout`: seconds, from the end of the
      headers, to send the body. A connection that misses either is closed.
    """

    rate_limit: float = 200.0
    rate_burst: int = 400
    max_body_bytes: int = 4 * 1024 * 1024
    max_batch: int = 1000
    ws_queue: int = 256
    max_page: int = 10_000
    heartbeat_timeout: float = 300.0
    header_timeout: float = 10.0
    body_timeout: float = 60.0
