"""The OpenAPI 3.1 document served at /api/v1/openapi.json, schemas from msgspec types."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from crucible.metrics import MetricRecord, MetricSummary

from ._schema import BatchIn, SystemBatchIn

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {}},
    "required": ["error", "detail"],
}


def _op(summary: str, *, body: str | None = None, params: Sequence[str] = ()) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK"},
            "4XX": {"description": "error", **_json(_ref("Error"))},
        },
        "parameters": [
            {
                "name": p,
                "in": "path" if p in ("run_id", "name") else "query",
                "required": p in ("run_id", "name"),
                "schema": {"type": "string"},
            }
            for p in params
        ],
    }
    if body is not None:
        operation["requestBody"] = {"required": True, **_json(_ref(body))}
    return operation


def openapi_document() -> dict[str, Any]:
    (_, components) = msgspec.json.schema_components(
        [BatchIn, SystemBatchIn, MetricRecord, MetricSummary],
        ref_template="#/components/schemas/{name}",
    )
    components["Error"] = _ERROR
    run = ["run_id"]
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
                    "Store up to 1000 points of one run atomically (Idempotency-Key header)",
                    body="BatchIn",
                )
            },
            "/api/v1/runs": {"get": _op("Runs with status and latest values")},
            "/api/v1/runs/{run_id}": {"delete": _op("Delete a run", params=run)},
            "/api/v1/runs/{run_id}/metrics": {
                "get": _op(
                    "Points, filtered and paged",
                    params=[
                        *run,
                        "metric",
                        "step_min",
                        "step_max",
                        "since",
                        "until",
                        "limit",
                        "offset",
                    ],
                )
            },
            "/api/v1/runs/{run_id}/metrics/latest": {
                "get": _op("Latest point per metric", params=run)
            },
            "/api/v1/runs/{run_id}/metrics/{name}": {
                "get": _op("History downsampled to max_points", params=[*run, "name", "max_points"])
            },
            "/api/v1/runs/{run_id}/metrics/{name}/stats": {
                "get": _op("Summary statistics of one metric", params=[*run, "name"])
            },
            "/api/v1/runs/{run_id}/system/batch": {
                "post": _op(
                    "Store system samples (cpu, memory, gpu)", body="SystemBatchIn", params=run
                )
            },
            "/api/v1/runs/{run_id}/system": {
                "get": _op("System series of a run", params=[*run, "max_points"])
            },
            "/healthz": {"get": _op("Liveness")},
            "/metrics": {"get": _op("Prometheus text format")},
        },
    }
