"""The REST handlers under /api/v1 and the WebSocket stream."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from crucible.metrics import (
    InvalidRecord,
    MetricNotFound,
    MetricRecord,
    MetricsStore,
    check_metric_name,
    check_run_id,
)

from ._config import ServiceConfig
from ._errors import ApiError, json_response
from ._guard import WS_SUBPROTOCOL, token_of
from ._idempotency import IdempotencyLedger, KeyState, check_key
from ._prometheus import ServiceStats
from ._runs_api import RunsApi
from ._schema import (
    MAX_METADATA_DEPTH,
    BatchIn,
    SystemBatchIn,
    decode_error_location,
    metadata_depth,
    whole_step,
)
from ._stream import SLOW_CONSUMER_CLOSE_CODE, Broadcaster

__all__ = ["SYSTEM_PREFIX", "Api"]

SYSTEM_PREFIX = "system/"
_INTEGER = re.compile(r"-?[0-9]{1,20}")
_decode_batch = msgspec.json.Decoder(BatchIn).decode
_decode_system = msgspec.json.Decoder(SystemBatchIn).decode
_encode = msgspec.json.encode


def _invalid(error: InvalidRecord) -> ApiError:
    return ApiError(
        422,
        "invalid_record",
        {"index": error.index, "field": error.field, "problem": error.problem},
    )


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _json_body(request: Request, decoder: Any) -> Any:
    """The request body decoded by `decoder`: 415 unless it is declared JSON, 400 if it is
    not JSON, 422 if it is the wrong shape or nests too deeply."""
    content_type = request.headers.get("content-type")
    if not _is_json(content_type):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the body as 'Content-Type: application/json', got {content_type!r}"[:200],
        )
    body = await request.body()
    try:
        return decoder(body)
    except msgspec.ValidationError as error:
        index, field = decode_error_location(str(error))
        raise ApiError(
            422, "invalid_record", {"index": index, "field": field, "problem": str(error)}
        ) from None
    except msgspec.DecodeError as error:
        raise ApiError(400, "malformed_json", str(error)) from None
    except RecursionError:  # msgspec's own limit on nesting, far deeper than ours
        raise _too_deep(None) from None


def _too_deep(index: int | None) -> ApiError:
    return ApiError(
        422,
        "invalid_record",
        {
            "index": index,
            "field": "metadata",
            "problem": f"nested more than {MAX_METADATA_DEPTH} levels deep",
        },
    )


def _run_id(request: Request | WebSocket) -> str:
    try:
        return check_run_id(request.path_params["run_id"])
    except InvalidRecord as error:
        raise ApiError(422, "invalid_run_id", error.problem) from None


def _int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):  # int() would also take "1_000", " 7" or Arabic-Indic digits
        raise ApiError(422, "invalid_parameter", f"{name} must be an integer, got {raw!r}")
    value = int(raw)
    if not low <= value <= high:
        raise ApiError(
            422, "invalid_parameter", f"{name} must be between {low} and {high}, got {value}"
        )
    return value


def _time_param(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:  # RFC 3339, as the OpenAPI document's format "date-time" (and bodies) say
        moment = msgspec.convert(raw, datetime)
    except msgspec.ValidationError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise ApiError(
            422,
            "invalid_parameter",
            f"{name} must be an ISO 8601 time with an offset (e.g. 2025-01-02T03:04:05Z), "
            f"got {raw!r}",
        )
    return moment


class Api:
    """The handlers, bound to one store, broadcaster, config and stats."""

    def __init__(
        self,
        store: MetricsStore,
        *,
        config: ServiceConfig,
        stats: ServiceStats,
        broadcaster: Broadcaster,
    ) -> None:
        self.store = store
        self.config = config
        self.stats = stats
        self.broadcaster = broadcaster
        self._ledger = IdempotencyLedger()
        self.runs = RunsApi(store, stale_after=config.heartbeat_timeout, json_body=_json_body)

    # -- writes ---------------------------------------------------------------------------

    async def post_batch(self, request: Request) -> Response:
        batch: BatchIn = await _json_body(request, _decode_batch)
        self._check_batch_size(len(batch.metrics))
        try:
            run_id = check_run_id(batch.run_id)
        except InvalidRecord as error:
            raise _invalid(error) from None
        now = datetime.now(UTC)
        records: list[MetricRecord] = []
        names_ok: set[str] = set()  # a batch repeats a few names: check each once
        try:
            for index, point in enumerate(batch.metrics):
                if point.metadata and metadata_depth(point.metadata) > MAX_METADATA_DEPTH:
                    raise _too_deep(index)
                try:
                    if point.metric not in names_ok:
                        names_ok.add(check_metric_name(point.metric))
                    records.append(
                        MetricRecord(
                            run_id,
                            point.metric,
                            point.value,
                            whole_step(point.step),
                            now if point.timestamp is None else point.timestamp,
                            point.metadata or {},
                        )
                    )
                except InvalidRecord as error:
                    raise error.at_index(index) from None
        except InvalidRecord as error:
            raise _invalid(error) from None
        return await self._store(run_id, records, request, batch)

    async def post_system_batch(self, request: Request) -> Response:
        run_id = _run_id(request)
        batch: SystemBatchIn = await _json_body(request, _decode_system)
        self._check_batch_size(len(batch.metrics))
        now = datetime.now(UTC)
        records: list[MetricRecord] = []
        for index, point in enumerate(batch.metrics):
            try:
                name = check_metric_name(SYSTEM_PREFIX + point.metric)
                ts = now if point.timestamp is None else point.timestamp
                records.append(MetricRecord(run_id, name, point.value, None, ts))
            except InvalidRecord as error:
                raise _invalid(error.at_index(index)) from None
        return await self._store(run_id, records, request, batch)

    def _check_batch_size(self, count: int) -> None:
        if count > self.config.max_batch:
            raise ApiError(
                413,
                "batch_too_large",
                {"limit": self.config.max_batch, "got": count, "problem": "split the batch"},
            )

    async def _store(
        self, run_id: str, records: list[MetricRecord], request: Request, batch: object
    ) -> Response:
        key = check_key(request.headers.get("idempotency-key"))
        state = KeyState.NEW
        if key is not None:
            token = token_of(request.scope).name
            store_key, state = self._ledger.claim(token, run_id, key, batch)
            try:
                await self.store.record_many(records, idempotency_key=store_key)
            except BaseException:
                if state is KeyState.NEW:
                    self._ledger.forget(token, run_id, key)
                raise
        else:
            await self.store.record_many(records)
        if state is KeyState.NEW:  # a retry was stored (and pushed) the first time
            self.stats.count_ingest(len(records))
            if records and self.broadcaster.has_subscribers(run_id):
                message = _encode({"run_id": run_id, "points": records})
                self.broadcaster.publish(run_id, message)
        return json_response({"run_id": run_id, "accepted": len(records)})

    async def delete_run(self, request: Request) -> Response:
        run_id = _run_id(request)
        recorded = await self.runs.get_run(run_id) is not None if self.runs.keeps_runs else False
        deleted = await self.store.delete_run(run_id)
        if not deleted and not recorded:
            raise ApiError(404, "run_not_found", f"no run {run_id!r}")
        return json_response({"run_id": run_id, "deleted": deleted})

    # -- reads ----------------------------------------------------------------------------

    async def list_runs(self, request: Request) -> Response:
        return await self.runs.list_runs(request)

    async def create_run(self, request: Request) -> Response:
        return await self.runs.create_run(request)

    async def get_run(self, request: Request) -> Response:
        return await self.runs.read_run(_run_id(request))

    async def update_run(self, request: Request) -> Response:
        return await self.runs.update_run(request, _run_id(request))

    async def heartbeat(self, request: Request) -> Response:
        return await self.runs.heartbeat(request, _run_id(request))

    async def _require_run(self, run_id: str) -> None:
        if run_id not in await self.store.runs():
            raise ApiError(404, "run_not_found", f"no run {run_id!r}")

    async def read_metrics(self, request: Request) -> Response:
        run_id = _run_id(request)
        metric = request.query_params.get("metric")
        if metric is not None:
            try:
                check_metric_name(metric)
            except InvalidRecord as error:
                raise ApiError(422, "invalid_parameter", f"metric {error.problem}") from None
        big = 2**63 - 1
        step_min = _int_param(request, "step_min", None, 0, big)
        step_max = _int_param(request, "step_max", None, 0, big)
        since, until = _time_param(request, "since"), _time_param(request, "until")
        limit = _int_param(request, "limit", 1000, 1, self.config.max_page)
        offset = _int_param(request, "offset", 0, 0, big)
        steps = None if step_min is None and step_max is None else (step_min, step_max)
        records = await self.store.read(
            run_id, metric=metric, steps=steps, since=since, until=until
        )
        if not records:
            await self._require_run(run_id)
        assert limit is not None and offset is not None
        return json_response(
            {
                "run_id": run_id,
                "total": len(records),
                "offset": offset,
                "limit": limit,
                "points": records[offset : offset + limit],
            }
        )

    async def latest(self, request: Request) -> Response:
        run_id = _run_id(request)
        latest = await self.store.latest(run_id)
        if not latest:
            raise ApiError(404, "run_not_found", f"no run {run_id!r}")
        return json_response({"run_id": run_id, "latest": latest})

    async def history(self, request: Request) -> Response:
        run_id = _run_id(request)
        name = request.path_params["name"]
        max_points = _int_param(request, "max_points", 1000, 3, self.config.max_page)
        assert max_points is not None
        points = await self.store.history(run_id, name, max_points)
        if not points:
            await self._require_run(run_id)
            raise ApiError(404, "metric_not_found", f"no metric {name!r} in run {run_id!r}")
        return json_response(
            {"run_id": run_id, "metric": name, "max_points": max_points, "points": points}
        )

    async def metric_stats(self, request: Request) -> Response:
        run_id = _run_id(request)
        name = request.path_params["name"]
        try:
            summary = await self.store.summary(run_id, name)
        except MetricNotFound:
            await self._require_run(run_id)
            raise ApiError(
                404, "metric_not_found", f"no metric {name!r} in run {run_id!r}"
            ) from None
        return json_response(summary)

    async def system(self, request: Request) -> Response:
        run_id = _run_id(request)
        max_points = _int_param(request, "max_points", 1000, 3, self.config.max_page)
        assert max_points is not None
        latest = await self.store.latest(run_id)
        if not latest:
            raise ApiError(404, "run_not_found", f"no run {run_id!r}")
        series = {
            name[len(SYSTEM_PREFIX) :]: await self.store.history(run_id, name, max_points)
            for name in latest
            if name.startswith(SYSTEM_PREFIX)
        }
        return json_response({"run_id": run_id, "series": series})

    # -- operations -----------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def prometheus(self, request: Request) -> Response:
        text = self.stats.render(
            subscribers=self.broadcaster.subscriber_count,
            dropped_subscribers=self.broadcaster.dropped_total,
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    # -- live stream ----------------------------------------------------------------------

    async def ws_metrics(self, websocket: WebSocket) -> None:
        """Push every point ingested for the run, as `{"run_id", "points": [...]}` texts."""
        try:
            run_id = check_run_id(websocket.path_params["run_id"])
        except InvalidRecord:
            await websocket.close(code=4422, reason="invalid run id")
            return
        offered = websocket.scope.get("subprotocols", ())
        await websocket.accept(subprotocol=WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else None)
        subscription = self.broadcaster.subscribe(run_id)
        try:
            async with anyio.create_task_group() as group:

                async def watch_client() -> None:
                    # Reading is how a disconnect is noticed; clients send nothing else.
                    while (await websocket.receive())["type"] != "websocket.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch_client)
                async for message in subscription.receive:
                    await websocket.send_text(message.decode())
                # The queue was closed: this subscriber fell too far behind.
                if subscription.dropped:
                    await websocket.close(SLOW_CONSUMER_CLOSE_CODE, "too slow: reconnect")
                group.cancel_scope.cancel()
        except WebSocketDisconnect:
            pass
        finally:
            self.broadcaster.unsubscribe(subscription)
