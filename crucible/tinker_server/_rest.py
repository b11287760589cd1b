"""The REST endpoints of ``tinker.RestClient``: training runs, checkpoints and sessions.

They answer from the files under the root (``Records``), so they work for runs and sessions of
earlier server processes too. Endpoints that cannot apply to a local server (billing, audit,
external-weights URLs, copies between projects) answer 400 with a sentence saying why: the SDK
raises it as ``BadRequestError`` at once (a 5xx or 409 would be retried for minutes).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from tinker import types

from crucible.tinker_server._errors import ServiceError
from crucible.tinker_server._models import RunInfo
from crucible.tinker_server._paths import SCHEME, check_run_id
from crucible.tinker_server._records import SessionFile, check_session_id, check_ttl
from crucible.tinker_server._service import TinkerService
from crucible.training import CheckpointNotFound

Handler = Callable[[Request], Awaitable[Response]]
OWNER = "local"


def _model(value: pydantic.BaseModel) -> Response:
    return JSONResponse(value.model_dump(mode="json"))


def _page(request: Request) -> tuple[int, int]:
    try:
        limit = int(request.query_params.get("limit", 20))
        offset = int(request.query_params.get("offset", 0))
    except ValueError:
        raise ServiceError(400, "limit and offset must be integers") from None
    if limit < 1 or offset < 0:
        raise ServiceError(400, f"limit must be >= 1 and offset >= 0, got {limit}, {offset}")
    return limit, offset


def _run_id(raw: str) -> str:
    try:
        return check_run_id(raw)
    except CheckpointNotFound as error:
        raise ServiceError(404, str(error)) from None


def _path(request: Request) -> str:
    params = request.path_params
    return f"{SCHEME}{_run_id(params['run_id'])}/{params['kind']}/{params['name']}"


def _status(session: SessionFile) -> dict[str, Any]:
    return session.status if session.status is not None else {"type": "active"}


def cannot_apply(what: str, why: str) -> Handler:
    async def refuse(_request: Request) -> Response:
        raise ServiceError(400, f"{what} is not available on this local Tinker server: {why}")

    return refuse


def rest_routes(service: Callable[[], TinkerService]) -> list[tuple[str, str, Handler]]:
    async def training_run(run: RunInfo) -> types.TrainingRun:
        checkpoints = await service().checkpoints.entries(run.model_id)
        training = [c for c in checkpoints if c.checkpoint_type == "training"]
        sampler = [c for c in checkpoints if c.checkpoint_type == "sampler"]
        model = service().sessions.models.get(run.model_id)
        last = max(
            [run.created, model.last_request if model is not None else 0.0]
            + [c.time.timestamp() for c in checkpoints]
        )
        return types.TrainingRun(
            training_run_id=run.model_id,
            base_model=run.base_model,
            model_owner=OWNER,
            is_lora=True,
            lora_rank=run.lora_rank,
            last_request_time=dt.datetime.fromtimestamp(last, dt.UTC),
            last_checkpoint=training[0] if training else None,
            last_sampler_checkpoint=sampler[0] if sampler else None,
            user_metadata=run.user_metadata,
        )

    def run_of(run_id: str) -> RunInfo:
        run = service().records.read_run_now(_run_id(run_id))
        if run is None:
            raise ServiceError(404, f"no training run {run_id!r} on this server")
        return run

    def runs() -> list[RunInfo]:
        records = service().records
        found = [records.read_run_now(run_id) for run_id in records.run_ids()]
        return sorted(
            (run for run in found if run is not None), key=lambda r: r.created, reverse=True
        )

    async def list_training_runs(request: Request) -> Response:
        limit, offset = _page(request)
        every = runs()
        page = [await training_run(run) for run in every[offset : offset + limit]]
        cursor = types.Cursor(offset=offset, limit=limit, total_count=len(every))
        return _model(types.TrainingRunsResponse(training_runs=page, cursor=cursor))

    async def get_training_run(request: Request) -> Response:
        return _model(await training_run(run_of(request.path_params["run_id"])))

    async def list_checkpoints(request: Request) -> Response:
        run_id = _run_id(request.path_params["run_id"])
        checkpoints = await service().checkpoints.entries(run_id)
        return _model(types.CheckpointsListResponse(checkpoints=checkpoints))

    async def list_user_checkpoints(request: Request) -> Response:
        limit, offset = _page(request)
        every: list[types.Checkpoint] = []
        for run in runs():
            every.extend(await service().checkpoints.entries(run.model_id))
        every.sort(key=lambda c: c.time, reverse=True)
        cursor = types.Cursor(offset=offset, limit=limit, total_count=len(every))
        return _model(
            types.CheckpointsListResponse(checkpoints=every[offset : offset + limit], cursor=cursor)
        )

    async def weights_info(request: Request) -> Response:
        body = await request.json()
        tinker_path = body.get("tinker_path") if isinstance(body, dict) else None
        if not isinstance(tinker_path, str):
            raise ServiceError(422, "weights_info needs {'tinker_path': 'tinker://...'}")
        path = service().checkpoints.existing(tinker_path)
        run = run_of(path.run_id)
        return _model(
            types.WeightsInfoResponse(
                base_model=run.base_model,
                is_lora=True,
                lora_rank=run.lora_rank,
                train_unembed=run.train_unembed,
                train_mlp=run.train_mlp,
                train_attn=run.train_attn,
            )
        )

    async def delete_checkpoint(request: Request) -> Response:
        await service().checkpoints.delete(_path(request))
        return JSONResponse({})

    async def publish(request: Request) -> Response:
        await service().checkpoints.update(_path(request), public=request.method == "POST")
        return JSONResponse({})

    async def set_ttl(request: Request) -> Response:
        body = await request.json()
        ttl = body.get("ttl_seconds") if isinstance(body, dict) else None
        if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool)):
            raise ServiceError(422, f"ttl_seconds must be an integer or null, got {ttl!r}")
        await service().checkpoints.update(_path(request), expires_at=check_ttl(ttl))
        return JSONResponse({})

    def stored_session(session_id: str) -> SessionFile:
        record = service().sessions.sessions.get(check_session_id(session_id))
        if record is None:
            raise ServiceError(404, f"no session {session_id!r} on this server")
        return record.stored

    async def list_sessions(request: Request) -> Response:
        limit, offset = _page(request)
        every = sorted(
            (record.stored for record in service().sessions.sessions.values()),
            key=lambda session: session.created,
            reverse=True,
        )
        ids = [session.session_id for session in every[offset : offset + limit]]
        return _model(types.ListSessionsResponse(sessions=ids))

    async def get_session(request: Request) -> Response:
        session = stored_session(request.path_params["session_id"])
        return _model(
            types.GetSessionResponse(
                training_run_ids=session.training_run_ids,
                sampler_ids=session.sampler_ids,
                user_metadata=session.user_metadata,
                display_name=session.display_name,
            )
        )

    async def assign_project(request: Request) -> Response:
        session = stored_session(request.path_params["session_id"])
        body = await request.json()
        project_id = body.get("project_id") if isinstance(body, dict) else None
        if not isinstance(project_id, str):
            raise ServiceError(422, "the body must be {'project_id': '...'}")
        session.project_id = project_id
        await service().sessions.save_session(service().sessions.sessions[session.session_id])
        return JSONResponse({})

    def summary(session: SessionFile) -> types.SessionSummary:
        return types.SessionSummary.model_validate(
            {
                "session_id": session.session_id,
                "created_at": dt.datetime.fromtimestamp(session.created, dt.UTC),
                "owner": OWNER,
                "project_id": session.project_id or "",
                "status": _status(session),
                "checkpoints_count": 0,
                "display_name": session.display_name,
                "user_metadata": session.user_metadata,
            }
        )

    async def search_sessions(request: Request) -> Response:
        try:
            query = types.SessionSearchRequest.model_validate(await request.json())
        except pydantic.ValidationError as error:
            raise ServiceError(422, f"invalid SessionSearchRequest: {error}") from None
        every = sorted(
            (record.stored for record in service().sessions.sessions.values()),
            key=lambda session: (session.created, session.session_id),
            reverse=True,
        )
        if query.cursor is not None:
            after = (query.cursor.last_created_at.timestamp(), query.cursor.last_session_id)
            every = [s for s in every if (s.created, s.session_id) < after]
        matched = [s for s in every if _matches(s, query)]
        page = matched[: query.limit]
        next_cursor = None
        if len(matched) > query.limit:
            last = page[-1]
            next_cursor = types.SessionSearchCursor(
                last_created_at=dt.datetime.fromtimestamp(last.created, dt.UTC),
                last_session_id=last.session_id,
            )
        return _model(
            types.SessionSearchResponse(
                sessions=[summary(s) for s in page], next_cursor=next_cursor
            )
        )

    async def trace_export(request: Request) -> Response:
        stored_session(request.path_params["session_id"])
        return JSONResponse(
            {
                "status": "failed",
                "error": "this local Tinker server records no request timeline to export as a "
                "Perfetto trace; time the calls on the client side",
            }
        )

    checkpoint = "/training_runs/{run_id}/checkpoints/{kind}/{name}"
    return [
        ("GET", "/training_runs", list_training_runs),
        ("GET", "/training_runs/{run_id}", get_training_run),
        ("GET", "/training_runs/{run_id}/checkpoints", list_checkpoints),
        ("DELETE", checkpoint, delete_checkpoint),
        ("POST", checkpoint + "/publish", publish),
        ("DELETE", checkpoint + "/publish", publish),
        ("PUT", checkpoint + "/ttl", set_ttl),
        (
            "GET",
            checkpoint + "/external_weights_urls",
            cannot_apply(
                "get_external_weights_urls",
                "it has no external-weights bucket (save_weights_external is not available "
                "either); checkpoints are files under the server's root",
            ),
        ),
        ("GET", "/checkpoints", list_user_checkpoints),
        ("POST", "/weights_info", weights_info),
        ("GET", "/sessions", list_sessions),
        ("POST", "/sessions/search", search_sessions),
        ("GET", "/sessions/{session_id}", get_session),
        ("PUT", "/sessions/{session_id}/project", assign_project),
        ("GET", "/sessions/{session_id}/trace_export", trace_export),
        (
            "POST",
            "/copy_weights",
            cannot_apply("copy_weights", "it has no projects to copy checkpoints between"),
        ),
        ("GET", "/audit", cannot_apply("the audit log", "it has no organization or audit log")),
        (
            "GET",
            "/billing/usage/events",
            cannot_apply("billing usage", "it bills nothing"),
        ),
        (
            "GET",
            "/billing/usage/checkpoints/current",
            cannot_apply("checkpoint storage usage", "it bills nothing; see the size of --root"),
        ),
    ]


def _matches(session: SessionFile, query: types.SessionSearchRequest) -> bool:
    if query.session_id is not None or query.display_name is not None:
        by_id = query.session_id is not None and session.session_id == query.session_id
        name = (session.display_name or "").lower()
        by_name = query.display_name is not None and all(
            word in name for word in query.display_name.lower().split()
        )
        if not (by_id or by_name):
            return False
    if query.project_ids is not None and session.project_id not in query.project_ids:
        return False
    metadata = session.user_metadata or {}
    if any(metadata.get(key) != value for key, value in query.user_metadata.items()):
        return False
    if query.statuses is not None:
        status = _status(session)
        kinds = {status_query.type for status_query in query.statuses}
        if status["type"] not in kinds:
            return False
    return True


def unavailable_routes() -> list[tuple[str, str, Handler]]:
    """Endpoints the SDK calls only when a server turns them on in ``/client/config`` (this one
    does not), answered with why should a client call them anyway."""
    return [
        (
            "POST",
            "/create_custom_loss",
            cannot_apply(
                "a server-side custom loss",
                "it runs the built-in losses only; use forward_backward_custom, which "
                "computes a custom loss on the client through forward and forward_backward",
            ),
        ),
        (
            "POST",
            "/retrieve_futures",
            cannot_apply(
                "batched retrieve_futures",
                "poll each request with retrieve_future (the server does not turn on "
                "sample_use_retrieve_futures)",
            ),
        ),
        (
            "POST",
            "/cancel_future",
            cannot_apply("cancel_future", "accepted requests always run to completion"),
        ),
        (
            "POST",
            "/join_sampling_session",
            cannot_apply("join_sampling_session", "sampling sessions live in one process"),
        ),
        (
            "POST",
            "/auth/token",
            cannot_apply(
                "JWT auth", "it answers pjwt_auth_enabled=false and checks the API key itself"
            ),
        ),
    ]
