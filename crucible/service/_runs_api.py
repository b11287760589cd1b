"""The run routes: create, update, heartbeat, get and list runs (filter, sort, cursor).

The listing reads run records and their metric summaries only, never the points, so it
costs the same however many points are stored.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from crucible.metrics import (
    ConfigFilter,
    InvalidRun,
    MetricRange,
    MetricStat,
    RunNotFound,
    RunQuery,
    RunRecord,
    RunSpec,
    RunStore,
    RunUpdate,
)

from ._errors import ApiError, json_response
from ._schema import HeartbeatIn, LatestValue, RunOut

__all__ = ["RunsApi", "run_out"]

_NUMBER = r"-?[0-9]{1,16}(?:\.[0-9]{1,16})?(?:[eE][+-]?[0-9]{1,2})?"
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.:\-]*"
_METRIC = rf"{_SEGMENT}(?:/{_SEGMENT})*"
_KEY = r"[A-Za-z0-9_\-]{1,64}"
METRIC_KEY = rf"(?P<metric>{_METRIC})(?:@(?P<aggregate>last|min|max|count))?"
METRIC_BOUND = re.compile(rf"{METRIC_KEY}:(?P<bound>{_NUMBER})")
SORT = re.compile(rf"started_at|name|metric:{METRIC_KEY}")
# The same rules for the OpenAPI document (ECMA regexes: no named groups).
_KEY_DOC = rf"{_METRIC}(@(last|min|max|count))?"
METRIC_BOUND_PATTERN = rf"^{_KEY_DOC}:{_NUMBER}$"
SORT_PATTERN = rf"^(started_at|name|metric:{_KEY_DOC})$"
CONFIG_PATTERN = rf"^{_KEY}(\.{_KEY})*=[^\x00]*$"
CONFIG = re.compile(rf"(?P<path>{_KEY}(?:\.{_KEY})*)=(?P<value>[^\x00]*)")
_decode_spec = msgspec.json.Decoder(RunSpec).decode
_decode_update = msgspec.json.Decoder(RunUpdate).decode
_decode_heartbeat = msgspec.json.Decoder(HeartbeatIn).decode


def run_out(run: RunRecord) -> RunOut:
    """A run as the API answers it: the record, plus the latest values the runs table shows."""
    metrics: dict[str, MetricStat] = run.metrics
    steps = [s.last_step for s in metrics.values() if s.last_step is not None]
    times = [s.last_timestamp for s in metrics.values()]
    return RunOut(
        **msgspec.structs.asdict(run),
        run_id=run.id,
        metric_count=len(metrics),
        last_step=max(steps) if steps else None,
        last_timestamp=max(times) if times else run.heartbeat_at,
        latest={
            name: LatestValue(s.last, s.last_step, s.last_timestamp) for name, s in metrics.items()
        },
    )


def _invalid(error: InvalidRun) -> ApiError:
    if error.field == "cursor":  # a token the server hands out: refused, not malformed input
        return ApiError(409, "invalid_cursor", error.problem)
    return ApiError(422, "invalid_run", {"field": error.field, "problem": error.problem})


def _bad(name: str, problem: str) -> ApiError:
    return ApiError(422, "invalid_parameter", {"field": name, "problem": problem})


def _config_value(text: str) -> str | int | float | bool | None:
    """A JSON scalar when `text` is one a filter can hold, else the text itself."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return value if "\x00" not in value and len(value) <= 256 else text
    if isinstance(value, int):
        return value if abs(value) < 2**53 else text
    if isinstance(value, float):
        return value if math.isfinite(value) else text
    return text


def parse_query(request: Request, stale_after: float) -> RunQuery:
    params = request.query_params
    config = []
    for raw in params.getlist("config"):
        match = CONFIG.fullmatch(raw)
        if match is None:
            raise _bad("config", "use config=<key>[.<key>...]=<JSON value or text>")
        config.append(ConfigFilter(tuple(match["path"].split(".")), _config_value(match["value"])))
    ranges: dict[tuple[str, str], tuple[float | None, float | None]] = {}
    for name, side in (("metric_min", 0), ("metric_max", 1)):
        for raw in params.getlist(name):
            match = METRIC_BOUND.fullmatch(raw)
            if match is None:
                raise _bad(name, f"use {name}=<metric>[@last|min|max|count]:<number>")
            key = (match["metric"], match["aggregate"] or "last")
            bounds = list(ranges.get(key, (None, None)))
            bounds[side] = float(match["bound"])
            ranges[key] = (bounds[0], bounds[1])
    sort = params.get("sort", "started_at")
    sort_match = SORT.fullmatch(sort)
    if sort_match is None:
        raise _bad("sort", "use started_at, name or metric:<metric>[@last|min|max|count]")
    order = params.get("order")
    if order not in (None, "asc", "desc"):
        raise _bad("order", "use asc or desc")
    raw_limit = params.get("limit", "100")
    if not raw_limit.isascii() or not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        raise _bad("limit", f"must be an integer from 1 to 1000, got {raw_limit!r}"[:120])
    return RunQuery(
        status=tuple(params.getlist("status")),
        tags=tuple(params.getlist("tag")),
        project=params.get("project"),
        group=params.get("group"),
        config=tuple(config),
        metrics=tuple(MetricRange(m, a, lo, hi) for (m, a), (lo, hi) in ranges.items()),
        sort="metric" if sort.startswith("metric:") else sort,
        sort_metric=sort_match["metric"],
        sort_aggregate=sort_match["aggregate"] or "last",
        descending=None if order is None else order == "desc",
        limit=int(raw_limit),
        cursor=params.get("cursor"),
        now=datetime.now(UTC),
        stale_after=stale_after,
    )


class RunsApi:
    """Handlers over a store that keeps runs; a store that does not answers 501."""

    def __init__(self, store: object, *, stale_after: float, json_body: Any) -> None:
        self._store = store if isinstance(store, RunStore) else None
        self._stale_after = stale_after
        self._json_body = json_body

    @property
    def keeps_runs(self) -> bool:
        return self._store is not None

    def _runs(self) -> RunStore:
        if self._store is None:
            raise ApiError(
                501,
                "runs_not_supported",
                "this store keeps no run records: use SQLite or PostgreSQL",
            )
        return self._store

    async def create_run(self, request: Request) -> Response:
        spec: RunSpec = await self._json_body(request, _decode_spec)
        try:
            run, created = await self._runs().create_run(spec)
        except InvalidRun as error:
            raise _invalid(error) from None
        return json_response(run_out(run), 201 if created else 200)

    async def update_run(self, request: Request, run_id: str) -> Response:
        update: RunUpdate = await self._json_body(request, _decode_update)
        try:
            run = await self._runs().update_run(run_id, update)
        except InvalidRun as error:
            raise _invalid(error) from None
        except RunNotFound:
            raise ApiError(404, "run_not_found", f"no run {run_id!r}") from None
        return json_response(run_out(run))

    async def heartbeat(self, request: Request, run_id: str) -> Response:
        at = None
        if (
            request.headers.get("content-length", "0") != "0"
            or "transfer-encoding" in request.headers
        ):
            beat: HeartbeatIn = await self._json_body(request, _decode_heartbeat)
            if beat.at is not None and beat.at.utcoffset() is None:
                raise ApiError(
                    422, "invalid_run", {"field": "at", "problem": "must have an offset"}
                )
            at = beat.at
        now = datetime.now(UTC)
        try:
            await self._runs().heartbeat(run_id, min(at, now) if at is not None else now)
        except RunNotFound:
            raise ApiError(404, "run_not_found", f"no run {run_id!r}") from None
        return json_response({"run_id": run_id})

    async def get_run(self, run_id: str) -> RunRecord | None:
        try:
            return await self._runs().get_run(run_id, stale_after=self._stale_after)
        except RunNotFound:
            return None

    async def read_run(self, run_id: str) -> Response:
        run = await self.get_run(run_id)
        if run is None:
            raise ApiError(404, "run_not_found", f"no run {run_id!r}")
        return json_response(run_out(run))

    async def list_runs(self, request: Request) -> Response:
        query = parse_query(request, self._stale_after)
        try:
            page = await self._runs().list_runs(query)
        except InvalidRun as error:
            raise _invalid(error) from None
        return json_response(
            {"runs": [run_out(run) for run in page.runs], "next_cursor": page.next_cursor}
        )
