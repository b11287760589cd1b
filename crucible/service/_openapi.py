"""The OpenAPI 3.1 document served at /api/v1/openapi.json: as strict as the server.

Every parameter carries the type, format, pattern and bounds the server enforces, every
response its schema, and the public routes say they need no token; tests/service run
Schemathesis (all checks) against it, so a difference either way is a failing test.
Body and record schemas come from the msgspec types the server decodes and encodes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from crucible.metrics import MetricRecord, MetricSummary, RunSpec, RunUpdate

from ._config import ServiceConfig
from ._runs_openapi import run_paths, tighten_runs
from ._schema import MAX_METADATA_DEPTH, BatchIn, HeartbeatIn, RunOut, SystemBatchIn

__all__ = ["openapi_document"]

# The naming rules of crucible.metrics (check_run_id, check_metric_name) as JSON Schema.
RUN_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}$"
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.:\-]*"
METRIC_PATTERN = rf"^{_SEGMENT}(/{_SEGMENT})*$"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]{0,198}[\x21-\x7e])?$"
_BIG = 2**63 - 1


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }


_ERROR = _object(
    {"error": {"type": "string"}, "detail": {}},
    {"request_id": {"type": "string"}},
)
_METRIC_NAME = {
    "type": "string",
    "maxLength": 200,
    "pattern": METRIC_PATTERN,
    # These name other routes under /runs/{id}/metrics/ (see check_metric_name).
    "not": {"anyOf": [{"const": "latest"}, {"pattern": "/stats$"}]},
}
_RUN_ID = {"type": "string", "pattern": RUN_ID_PATTERN}
_ACCEPTED = _object({"run_id": _RUN_ID, "accepted": {"type": "integer", "minimum": 0}})
_POINTS = {"type": "array", "items": _ref("MetricRecord")}
_LATEST = _object(
    {
        "run_id": _RUN_ID,
        "latest": {"type": "object", "additionalProperties": _ref("MetricRecord")},
    }
)


def _int(low: int, high: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}  # fmt: skip


_RUN_PARAM = {"name": "run_id", "in": "path", "required": True, "schema": _RUN_ID}
# In a path, "latest" and a name ending in "/stats" reach the routes of those names (a
# stored metric can have neither name); the history operation says so in its responses.
_NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 200, "pattern": METRIC_PATTERN},
}
_KEY_PARAM = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Stores the batch once: a retry with the same key and batch is answered "
    "200 again; the same key with another batch of the same run is 409. Keys are scoped "
    "per token and run.",
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    public: bool = False,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": params or [],
        "responses": {
            "200": {"description": "OK", **ok},
            "4XX": {"description": "refused; `error` is a stable code", **_json(_ref("Error"))},
            "5XX": {"description": "server error, with a request id", **_json(_ref("Error"))},
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, **_json(_ref(body))}
    if public:
        operation["security"] = []
    return operation


_TIMESTAMP = {"type": "string", "format": "date-time"}
_STEP = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": _BIG}, {"type": "null"}]}
# A system sample's name is stored as "system/<name>", so only "/stats" at the end is taken.
_SYSTEM_METRIC = {
    "type": "string",
    "maxLength": 200 - len("system/"),
    "pattern": METRIC_PATTERN,
    "not": {"pattern": "(^|/)stats$"},
}


# Metadata is JSON without NUL characters (no store can hold them in text); nesting deeper
# than MAX_METADATA_DEPTH is refused too, which JSON Schema cannot say without recursion.
_NO_NUL = {"type": "string", "pattern": "^[^\\x00]*$"}
_METADATA = {
    "type": "object",
    "propertyNames": _NO_NUL,
    "additionalProperties": _ref("MetadataValue"),
    "description": f"JSON, at most {MAX_METADATA_DEPTH} levels deep, without NUL characters",
}
_METADATA_VALUE = {
    "anyOf": [
        _NO_NUL,
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": _ref("MetadataValue")},
        _ref("Metadata"),
    ]
}


def _tighten(components: dict[str, Any], config: ServiceConfig) -> None:
    """Add to the msgspec schemas what the server checks beyond the types: the naming rules,
    bounds, and timestamps with an offset."""
    batch, point = components["BatchIn"]["properties"], components["PointIn"]["properties"]
    batch["run_id"] = _RUN_ID
    point["metric"] = _METRIC_NAME
    point["step"] = _STEP
    point["timestamp"] = {"anyOf": [_TIMESTAMP, {"type": "null"}]}
    point["metadata"] = {"anyOf": [_ref("Metadata"), {"type": "null"}]}
    components["Metadata"] = _METADATA
    components["MetadataValue"] = _METADATA_VALUE
    system = components["SystemPointIn"]["properties"]
    system["metric"] = _SYSTEM_METRIC
    system["timestamp"] = {"anyOf": [_TIMESTAMP, {"type": "null"}]}
    for name in ("BatchIn", "SystemBatchIn"):
        components[name]["properties"]["metrics"]["maxItems"] = config.max_batch
    record = components["MetricRecord"]["properties"]
    record["timestamp"] = _TIMESTAMP
    record["step"] = _STEP


def openapi_document(config: ServiceConfig | None = None) -> dict[str, Any]:
    config = config or ServiceConfig()
    (_, components) = msgspec.json.schema_components(
        [
            BatchIn,
            SystemBatchIn,
            MetricRecord,
            MetricSummary,
            RunSpec,
            RunUpdate,
            HeartbeatIn,
            RunOut,
        ],
        ref_template="#/components/schemas/{name}",
    )
    components["Error"] = _ERROR
    _tighten(components, config)
    tighten_runs(components, _RUN_ID, _STEP)
    runs = run_paths(_op, _json, _ref, _RUN_PARAM)
    page = _int(1, config.max_page)
    max_points = _int(3, config.max_page)
    read_params = [
        _RUN_PARAM,
        _query("metric", _METRIC_NAME, "only this metric"),
        _query("step_min", _int(0, _BIG), "lowest step (inclusive)"),
        _query("step_max", _int(0, _BIG), "highest step (inclusive)"),
        _query("since", {"type": "string", "format": "date-time"}, "from this time on"),
        _query("until", {"type": "string", "format": "date-time"}, "before this time"),
        _query("limit", page, "points per page (default 1000)"),
        _query("offset", _int(0, _BIG), "points to skip"),
    ]
    history_params = [_RUN_PARAM, _NAME_PARAM, _query("max_points", max_points, "at most")]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Crucible metric service", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/metrics/batch": {
                "post": _op(
                    f"Store up to {config.max_batch} points of one run atomically",
                    _json(_ACCEPTED),
                    params=[_KEY_PARAM],
                    body="BatchIn",
                )
            },
            "/api/v1/runs": runs["/api/v1/runs"],
            "/api/v1/runs/{run_id}": {
                **runs["/api/v1/runs/{run_id}"],
                "delete": _op(
                    "Delete a run: its record and its points",
                    _json(_object({"run_id": _RUN_ID, "deleted": {"type": "integer"}})),
                    params=[_RUN_PARAM],
                ),
            },
            "/api/v1/runs/{run_id}/heartbeat": runs["/api/v1/runs/{run_id}/heartbeat"],
            "/api/v1/runs/{run_id}/metrics": {
                "get": _op(
                    "Points, filtered and paged",
                    _json(
                        _object(
                            {
                                "run_id": _RUN_ID,
                                "total": {"type": "integer", "minimum": 0},
                                "offset": {"type": "integer", "minimum": 0},
                                "limit": {"type": "integer", "minimum": 1},
                                "points": _POINTS,
                            }
                        )
                    ),
                    params=read_params,
                )
            },
            "/api/v1/runs/{run_id}/metrics/latest": {
                "get": _op(
                    "Latest point per metric",
                    _json(_LATEST),
                    params=[_RUN_PARAM],
                )
            },
            "/api/v1/runs/{run_id}/metrics/{name}": {
                "get": _op(
                    "History downsampled to max_points (each bucket's min, max and last)",
                    _json(
                        {
                            "anyOf": [
                                _object(
                                    {
                                        "run_id": _RUN_ID,
                                        "metric": {"type": "string"},
                                        "max_points": {"type": "integer"},
                                        "points": _POINTS,
                                    }
                                ),
                                _LATEST,  # name "latest"
                                _ref("MetricSummary"),  # a name ending in "/stats"
                            ]
                        }
                    ),
                    params=history_params,
                )
            },
            "/api/v1/runs/{run_id}/metrics/{name}/stats": {
                "get": _op(
                    "Summary statistics of one metric",
                    _json(_ref("MetricSummary")),
                    params=[_RUN_PARAM, _NAME_PARAM],
                )
            },
            "/api/v1/runs/{run_id}/system/batch": {
                "post": _op(
                    "Store system samples (cpu, memory, gpu) as system/<metric>",
                    _json(_ACCEPTED),
                    params=[_RUN_PARAM, _KEY_PARAM],
                    body="SystemBatchIn",
                )
            },
            "/api/v1/runs/{run_id}/system": {
                "get": _op(
                    "System series of a run",
                    _json(
                        _object(
                            {
                                "run_id": _RUN_ID,
                                "series": {"type": "object", "additionalProperties": _POINTS},
                            }
                        )
                    ),
                    params=[_RUN_PARAM, _query("max_points", max_points, "at most")],
                )
            },
            "/healthz": {
                "get": _op(
                    "Liveness (no token needed)",
                    _json(_object({"status": {"const": "ok"}})),
                    public=True,
                )
            },
            "/metrics": {
                "get": _op(
                    "Counters in Prometheus' text format",
                    {"content": {"text/plain": {"schema": {"type": "string"}}}},
                )
            },
        },
    }
