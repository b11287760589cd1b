"""The run routes in the OpenAPI document: bodies from the msgspec types the server decodes,
tightened to what it checks beyond the types; list parameters with the server's patterns."""

from __future__ import annotations

from typing import Any

from ._runs_api import CONFIG_PATTERN, METRIC_BOUND_PATTERN, SORT_PATTERN

__all__ = ["RUN_TYPES", "run_paths", "tighten_runs"]

_TIMESTAMP = {"type": "string", "format": "date-time"}
_MAYBE_TIMESTAMP = {"anyOf": [_TIMESTAMP, {"type": "null"}]}
_NO_NUL = "^[^\\x00]*$"
_TAG = {"type": "string", "pattern": "^[^\\x00-\\x1f\\x7f]{1,64}$"}
_TAGS = {"type": "array", "items": _TAG, "maxItems": 64}
_NUMBERS = {
    "type": "object",
    "propertyNames": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": _NO_NUL},
    "additionalProperties": {"type": "number"},
}


def _text(limit: int, *, required: bool = False, nullable: bool = False) -> dict[str, Any]:
    text = {"type": "string", "maxLength": limit, "pattern": _NO_NUL}
    if required:
        text["minLength"] = 1
    return {"anyOf": [text, {"type": "null"}]} if nullable else text


def tighten_runs(components: dict[str, Any], run_id: dict[str, Any], step: dict[str, Any]) -> None:
    spec = components["RunSpec"]["properties"]
    spec["id"] = run_id
    for field in ("name", "project", "group", "host", "git_commit"):
        spec[field] = _text(256, nullable=True)
    spec["notes"] = _text(65536)
    spec["tags"] = _TAGS
    spec["config"] = {"$ref": "#/components/schemas/Metadata"}
    spec["started_at"] = _MAYBE_TIMESTAMP
    update = components["RunUpdate"]["properties"]
    update["tags"] = _TAGS
    update["notes"] = _text(65536)
    update["summary"] = _NUMBERS
    update["ended_at"] = _MAYBE_TIMESTAMP
    checkpoint = components["CheckpointRef"]["properties"]
    checkpoint["name"] = _text(256, required=True)
    checkpoint["step"] = step
    for field in ("state_path", "sampler_path"):
        checkpoint[field] = _text(4096, nullable=True)
    checkpoint["metrics"] = _NUMBERS
    checkpoint["created_at"] = _MAYBE_TIMESTAMP
    version = components["ModelVersionRef"]["properties"]
    version["name"] = version["version"] = _text(4096, required=True)
    version["stage"] = version["checkpoint"] = _text(4096, nullable=True)
    version["created_at"] = _MAYBE_TIMESTAMP
    components["HeartbeatIn"]["properties"]["at"] = _MAYBE_TIMESTAMP
    out = components["RunOut"]["properties"]
    out["id"] = out["run_id"] = run_id
    for field in ("started_at", "heartbeat_at", "last_timestamp"):
        out[field] = _TIMESTAMP
    out["ended_at"] = _MAYBE_TIMESTAMP
    out["last_step"] = step
    components["MetricStat"]["properties"]["last_timestamp"] = _TIMESTAMP
    components["MetricStat"]["properties"]["last_step"] = step
    components["LatestValue"]["properties"]["timestamp"] = _TIMESTAMP
    components["LatestValue"]["properties"]["step"] = step


def _many(name: str, items: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "style": "form",
        "explode": True,
        "schema": {"type": "array", "items": items},
        "description": description,
    }


def _one(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}  # fmt: skip


LIST_PARAMS = [
    _many(
        "status",
        {"enum": ["running", "completed", "failed", "crashed"]},
        "any of these statuses",
    ),
    _many("tag", _TAG, "has every one of these tags"),
    _one("project", _text(256), "this project"),
    _one("group", _text(256), "this group"),
    _many(
        "config",
        {"type": "string", "maxLength": 4096, "pattern": CONFIG_PATTERN},
        "key.path=value: the config holds this JSON scalar (else this text) there",
    ),
    _many(
        "metric_min",
        {"type": "string", "maxLength": 512, "pattern": METRIC_BOUND_PATTERN},
        "metric[@last|min|max|count]:number, the summary at least this (default last)",
    ),
    _many(
        "metric_max",
        {"type": "string", "maxLength": 512, "pattern": METRIC_BOUND_PATTERN},
        "metric[@last|min|max|count]:number, the summary at most this",
    ),
    _one(
        "sort",
        {"type": "string", "maxLength": 512, "pattern": SORT_PATTERN},
        "started_at (default), name, or metric:<name>[@last|min|max|count]; runs without "
        "the metric come last",
    ),
    _one("order", {"enum": ["asc", "desc"]}, "default: desc for started_at, else asc"),
    _one("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "runs per page (100)"),
    _one(
        "cursor",
        {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,2048}$"},
        "next_cursor of the previous page (same filters and sort; another sort's cursor "
        "is answered 409)",
    ),
]

RUN_TYPES = ("RunSpec", "RunUpdate", "HeartbeatIn", "RunOut")


def run_paths(op: Any, json: Any, ref: Any, run_param: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run operations, by path and method (`op`, `json`, `ref` from `_openapi`)."""
    run = json(ref("RunOut"))
    created = op("Create a run (201), or resume the one with this id (200)", run, body="RunSpec")
    created["responses"]["201"] = {"description": "Created", **run}
    page = json(
        {
            "type": "object",
            "properties": {
                "runs": {"type": "array", "items": ref("RunOut")},
                "next_cursor": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["runs", "next_cursor"],
        }
    )
    beat = op(
        "Heartbeat: the run is alive (no body: now; a future `at` counts as now)",
        json(
            {
                "type": "object",
                "properties": {"run_id": run_param["schema"]},
                "required": ["run_id"],
            }
        ),
        params=[run_param],
        body="HeartbeatIn",
    )
    beat["requestBody"]["required"] = False
    return {
        "/api/v1/runs": {
            "get": op("Runs: filtered, sorted, paged by cursor", page, params=LIST_PARAMS),
            "post": created,
        },
        "/api/v1/runs/{run_id}": {
            "get": op("One run", run, params=[run_param]),
            "patch": op(
                "Update a run: status, tags, notes, summary, end, checkpoints, model versions",
                run,
                params=[run_param],
                body="RunUpdate",
            ),
        },
        "/api/v1/runs/{run_id}/heartbeat": {"post": beat},
    }
