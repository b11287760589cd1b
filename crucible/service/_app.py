"""create_app: the Starlette application of the metric service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from crucible.metrics import MetricsStore, open_store

from ._api import Api
from ._config import ServiceConfig
from ._errors import ApiError, json_response
from ._guard import Guard
from ._openapi import openapi_document
from ._prometheus import ServiceStats
from ._stream import Broadcaster
from ._tokens import TokenStore

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"


async def _api_error(request: Any, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Any, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return json_response({"error": code, "detail": exc.detail}, exc.status_code, exc.headers)


def create_app(
    store: MetricsStore | str,
    *,
    tokens: TokenStore | None,
    config: ServiceConfig | None = None,
) -> Starlette:
    """The service over `store` (an open store, or a URL opened for the app's lifetime
    with `durable=True`, so an answered batch survives a crash of the server).

    `tokens=None` turns authentication off (local use only).
    """
    config = config or ServiceConfig()
    stats = ServiceStats()
    broadcaster = Broadcaster(config.ws_queue)
    holder: dict[str, Api] = {}

    def api() -> Api:
        return holder["api"]

    if not isinstance(store, str):
        holder["api"] = Api(store, config=config, stats=stats, broadcaster=broadcaster)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not isinstance(store, str):
            yield
            return
        opened = await open_store(store, **({} if store == "memory://" else {"durable": True}))
        holder["api"] = Api(opened, config=config, stats=stats, broadcaster=broadcaster)
        try:
            yield
        finally:
            await opened.close()

    def bound(name: str) -> Any:
        async def endpoint(request: Any) -> Any:
            return await getattr(api(), name)(request)

        endpoint.__name__ = name
        return endpoint

    def by_method(path: str, name: str, **handlers: str) -> Route:
        """One route for every method of `path`, so a 405 lists them all in Allow."""

        async def endpoint(request: Request) -> Any:
            method = "GET" if request.method == "HEAD" else request.method
            return await getattr(api(), handlers[method])(request)

        return Route(path, endpoint, methods=list(handlers), name=name)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document(config))

    v1 = "/api/v1"
    routes = [
        Route("/", index),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/healthz", bound("healthz")),
        Route("/metrics", bound("prometheus")),
        Route(f"{v1}/openapi.json", openapi),
        Route(f"{v1}/metrics/batch", bound("post_batch"), methods=["POST"]),
        by_method(f"{v1}/runs", "runs", GET="list_runs", POST="create_run"),
        by_method(
            f"{v1}/runs/{{run_id}}", "run", GET="get_run", PATCH="update_run", DELETE="delete_run"
        ),
        Route(f"{v1}/runs/{{run_id}}/heartbeat", bound("heartbeat"), methods=["POST"]),
        Route(f"{v1}/runs/{{run_id}}/metrics", bound("read_metrics")),
        Route(f"{v1}/runs/{{run_id}}/metrics/latest", bound("latest")),
        Route(f"{v1}/runs/{{run_id}}/metrics/{{name:path}}/stats", bound("metric_stats")),
        Route(f"{v1}/runs/{{run_id}}/metrics/{{name:path}}", bound("history")),
        Route(f"{v1}/runs/{{run_id}}/system/batch", bound("post_system_batch"), methods=["POST"]),
        Route(f"{v1}/runs/{{run_id}}/system", bound("system")),
        WebSocketRoute("/ws/metrics/{run_id}", bound("ws_metrics")),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            # Any other exception is answered by Guard: a generic 500 with a request id.
        },
    )
    app.add_middleware(Guard, tokens=tokens, config=config, stats=stats, routes=routes)
    app.state.config = config
    app.state.stats = stats
    app.state.broadcaster = broadcaster
    return app
