"""The HTTP face of the server: the ``/api/v1`` endpoints the Tinker SDK calls.

JSON bodies are validated with the SDK's own request types, so the server accepts exactly what
the SDK sends. Errors are ``{"detail": ...}`` with a status the SDK acts on: 400 for a body it
cannot decode, 422 for one that does not fit the schema, 401 for a bad API key, 404 for an
unknown id, 410 for a finished session or a forgotten request id. A request the server
accepted but cannot carry out (bad tensors, unknown checkpoint) fails through its future with
``{"error", "category": "user"}``, which the SDK raises as ``RequestFailedError``; its seq_id
still counts, so later requests of the model are not held up. A training request refused
before it was queued (any status here) uses up the seq_id its body names just the same
(``TrainingModel.refuse``), and any path the server does not serve is answered with a sentence.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import pydantic
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from tinker import types

from crucible.tinker_server._config import ServerConfig
from crucible.tinker_server._errors import ServiceError
from crucible.tinker_server._faults import FaultInjector, InjectedServerFault
from crucible.tinker_server._futures import Outcome
from crucible.tinker_server._rest import rest_routes, unavailable_routes
from crucible.tinker_server._service import TinkerService
from crucible.tinker_server._wire import (
    MalformedBody,
    decode_body,
    parse_forward_backward,
    training_turn,
)

M = TypeVar("M", bound=pydantic.BaseModel)
Handler = Callable[[Request], Awaitable[Response]]
PREFIX = "/api/v1"
#: Answered without an API key: liveness probes.
OPEN_PATHS = frozenset({f"{PREFIX}/healthz"})
_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError as error:
        raise ServiceError(400, f"the body is not JSON: {error}") from None


async def _parse(request: Request, model: type[M]) -> M:
    body = await _json(request)
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as error:
        raise ServiceError(422, f"invalid {model.__name__}: {error}") from None


async def refused_turn(request: Request) -> tuple[str, int] | None:
    """The training turn (model id, seq_id) a refused request named, if any."""
    if request.method != "POST":
        return None
    body = await request.body()  # starlette keeps the body read by the handler
    return training_turn(
        body,
        request.headers.get("content-type", ""),
        request.headers.get("content-encoding"),
    )


class ApiKeyCheck:
    """Accepts the configured keys only (any key when none are configured)."""

    def __init__(self, app: ASGIApp, keys: frozenset[str]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and scope["path"] not in OPEN_PATHS:
            headers = dict(scope["headers"])
            key = headers.get(b"x-api-key", b"").decode("latin-1")
            if key not in self.keys:
                response = _error(
                    401,
                    "Invalid API key: this server does not accept the key sent in X-API-Key; "
                    "pass one it was started with (--api-key) as api_key= or TINKER_API_KEY",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(
    config: ServerConfig,
    started: threading.Event | None = None,
    fault_log: list[InjectedServerFault] | None = None,
) -> Starlette:
    """The ASGI app. ``started`` is set once the app can serve (after lifespan startup);
    ``fault_log`` collects the faults injected in fault mode."""
    state: dict[str, TinkerService] = {}

    def service() -> TinkerService:
        return state["service"]

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            state["service"] = TinkerService(config, tasks)
            if started is not None:
                started.set()
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await state["service"].aclose()

    def endpoint(handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except MalformedBody as error:
                refusal = ServiceError(400, str(error))
            except ServiceError as error:
                refusal = error
            # A refused training request still uses up its seq_id: the SDK has handed its turn
            # on, and the model's later requests must not wait for it forever.
            turn = await refused_turn(request)
            if turn is not None:
                model = service().sessions.models.get(turn[0])
                if model is not None:
                    await model.refuse(turn[1], refusal)
            return _error(refusal.status, refusal.message)

        return run

    # -- session and configuration -------------------------------------------------------

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def client_config(_request: Request) -> Response:
        # httpx over loopback HTTP/1.1 works everywhere; pyqwest works too but adds nothing here.
        answer: dict[str, Any] = {"pjwt_auth_enabled": False, "use_pyqwest_transport": False}
        answer.update(config.client_config)
        return JSONResponse(answer)

    async def dynamic_config(_request: Request) -> Response:
        return JSONResponse({"refresh_interval_sec": 300})

    async def create_session(request: Request) -> Response:
        parsed = await _parse(request, types.CreateSessionRequest)
        session_id = await service().sessions.create_session(
            request.headers.get("x-idempotency-key"), parsed
        )
        return JSONResponse({"session_id": session_id, "type": "create_session"})

    async def heartbeat(request: Request) -> Response:
        body = await _json(request)
        service().sessions.heartbeat(str(body.get("session_id", "")))
        return JSONResponse({"type": "session_heartbeat"})

    async def finish_session(request: Request) -> Response:
        body = await _json(request)
        reason = body.get("reason") if isinstance(body, dict) else None
        status: dict[str, Any] = {
            "type": "client_finished",
            "reason": reason if isinstance(reason, dict) else {"type": "success"},
            "detail": body.get("detail") if isinstance(body, dict) else None,
        }
        await service().sessions.finish_session(request.path_params["session_id"], status)
        return JSONResponse({})

    async def telemetry(_request: Request) -> Response:
        return JSONResponse({"status": "accepted"})

    async def capabilities(_request: Request) -> Response:
        return JSONResponse({"supported_models": service().capabilities()})

    # -- models and training --------------------------------------------------------------

    def future(request_id: str, **extra: Any) -> Response:
        return JSONResponse({"request_id": request_id, **extra})

    async def create_model(request: Request) -> Response:
        parsed = await _parse(request, types.CreateModelRequest)
        return future(await service().training.create_model(parsed))

    async def get_info(request: Request) -> Response:
        parsed = await _parse(request, types.GetInfoRequest)
        return JSONResponse(service().training.info(parsed.model_id).model_dump(mode="json"))

    async def forward_backward(request: Request) -> Response:
        body = decode_body(await request.body(), request.headers.get("content-encoding"))
        message = parse_forward_backward(body)
        return future(await service().training.forward_backward(message), model_id=message.model_id)

    async def optim_step(request: Request) -> Response:
        parsed = await _parse(request, types.OptimStepRequest)
        return future(await service().training.optim_step(parsed), model_id=parsed.model_id)

    async def save_weights(request: Request) -> Response:
        parsed = await _parse(request, types.SaveWeightsRequest)
        return future(await service().checkpoints.save_weights(parsed), model_id=parsed.model_id)

    async def load_weights(request: Request) -> Response:
        parsed = await _parse(request, types.LoadWeightsRequest)
        if parsed.model_id is not None:
            return future(
                await service().checkpoints.load_weights(parsed), model_id=parsed.model_id
            )
        if parsed.session_id is None or parsed.model_seq_id is None:
            raise ServiceError(422, "load_weights needs model_id, or session_id and model_seq_id")
        return future(await service().checkpoints.create_from_state(parsed))

    async def save_for_sampler(request: Request) -> Response:
        parsed = await _parse(request, types.SaveWeightsForSamplerRequest)
        if parsed.path is None and parsed.sampling_session_seq_id is None:
            raise ServiceError(
                422, "save_weights_for_sampler needs path or sampling_session_seq_id"
            )
        if parsed.path is None:
            request_id = await service().sampling.snapshot(parsed)
        else:
            request_id = await service().checkpoints.save_weights_for_sampler(parsed)
        return future(request_id, model_id=parsed.model_id)

    # -- sampling ------------------------------------------------------------------------

    async def create_sampling_session(request: Request) -> Response:
        parsed = await _parse(request, types.CreateSamplingSessionRequest)
        sampler_id = await service().sampling.create_sampling_session(parsed)
        return JSONResponse({"sampling_session_id": sampler_id, "type": "create_sampling_session"})

    async def get_sampler(request: Request) -> Response:
        sampler = service().sampling.sampler(request.path_params["sampler_id"])
        return JSONResponse(
            {
                "sampler_id": sampler.sampler_id,
                "base_model": sampler.base_model,
                "model_path": sampler.model_path,
            }
        )

    async def asample(request: Request) -> Response:
        parsed = await _parse(request, types.SampleRequest)
        request_id, sequence_ids = await service().sampling.sample(parsed)
        return future(request_id, sample_sequence_ids=sequence_ids)

    # -- futures -------------------------------------------------------------------------

    async def retrieve_future(request: Request) -> Response:
        body = await _json(request)
        request_id = body.get("request_id") if isinstance(body, dict) else None
        if not isinstance(request_id, str):
            raise ServiceError(422, "retrieve_future needs a request_id string")
        futures = service().sessions.futures
        pending = futures.get(request_id)
        if pending is None and futures.from_earlier_boot(request_id):
            # Answered as a failed request (RequestFailedError), which the SDK does not retry.
            lost = Outcome.failed(
                f"ServerRestarted: request {request_id} was accepted by an earlier process of "
                "this server, which stopped before its result was retrieved; the result is "
                "lost. Sessions, runs and checkpoints were kept: create a new training client "
                "from the run's last checkpoint",
                "server",
            )
            return Response(lost.body, media_type=lost.media_type)
        if pending is None:
            # 410: the SDK treats the promise as lost (and samplers resubmit).
            raise ServiceError(410, f"unknown or expired request id {request_id!r}")
        outcome = await pending.wait(config.long_poll_s)
        if outcome is None:
            return JSONResponse(
                {"type": "try_again", "request_id": request_id, "queue_state": "active"}
            )
        return Response(outcome.body, media_type=outcome.media_type)

    async def save_weights_external(request: Request) -> Response:
        parsed = await _parse(request, types.SaveWeightsExternalRequest)
        request_id = await service().training.save_weights_external(parsed)
        return future(request_id, model_id=parsed.model_id)

    async def unknown(request: Request) -> Response:
        raise ServiceError(
            404,
            f"this local Tinker server has no endpoint {request.method} {request.url.path} "
            "(it may be newer than the server: see docs/backends.md for what it serves)",
        )

    routes = [
        ("GET", "/healthz", healthz),
        ("POST", "/client/config", client_config),
        ("POST", "/client/dynamic_config", dynamic_config),
        ("POST", "/create_session", create_session),
        ("POST", "/session_heartbeat", heartbeat),
        ("POST", "/sessions/{session_id}/finish", finish_session),
        ("POST", "/telemetry", telemetry),
        ("GET", "/get_server_capabilities", capabilities),
        ("POST", "/create_model", create_model),
        ("POST", "/get_info", get_info),
        ("POST", "/forward_backward", forward_backward),
        ("POST", "/optim_step", optim_step),
        ("POST", "/save_weights", save_weights),
        ("POST", "/load_weights", load_weights),
        ("POST", "/save_weights_for_sampler", save_for_sampler),
        ("POST", "/create_sampling_session", create_sampling_session),
        ("GET", "/samplers/{sampler_id}", get_sampler),
        ("POST", "/asample", asample),
        ("POST", "/retrieve_future", retrieve_future),
        ("POST", "/save_weights_external", save_weights_external),
        *rest_routes(service),
        *unavailable_routes(),
    ]
    middleware = [Middleware(ApiKeyCheck, keys=config.api_keys)]
    if config.fault_rate > 0:
        # Outermost, so a fault can also hit a request the key check would have refused.
        middleware.insert(
            0,
            Middleware(
                FaultInjector,
                rate=config.fault_rate,
                seed=config.fault_seed,
                kinds=config.fault_kinds,
                retry_after_ms=config.fault_retry_after_ms,
                exempt=OPEN_PATHS | {f"{PREFIX}/telemetry"},
                log=fault_log,
            ),
        )
    return Starlette(
        routes=[
            Route(PREFIX + path, endpoint(handler), methods=[method])
            for method, path, handler in routes
        ]
        # Last: any other path is answered with a sentence, never a bare "Not Found".
        + [Route("/{path:path}", endpoint(unknown), methods=list(_METHODS))],
        middleware=middleware,
        lifespan=lifespan,
    )
