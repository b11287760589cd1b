"""The run routes over HTTP: create, resume, update, heartbeat, list (filters, sort, cursor),
and the errors: 422 naming the field, 404 for an unknown run, 409 for a foreign cursor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .service_kit import Service, points, service


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Service]:
    with service(tmp_path, rate_limit=0) as made:
        yield made


def send(svc: Service, method: str, path: str, body: Any = None) -> Any:
    return svc.client.request(method, path, json=body, headers=svc.auth())


def test_runs_are_created_updated_listed_and_paged(svc: Service) -> None:
    created = send(svc, "POST", "/api/v1/runs", {"id": "r1", "tags": ["a"], "config": {"lr": 0.1}})
    assert created.status_code == 201 and created.json()["status"] == "running"
    assert send(svc, "POST", "/api/v1/runs", {"id": "r1"}).status_code == 200  # resumed
    send(svc, "POST", "/api/v1/runs", {"id": "r2", "config": {"lr": 1}})
    svc.post("r1", points(3))
    svc.post("r2", points(5))
    updated = send(svc, "PATCH", "/api/v1/runs/r2", {"status": "failed", "summary": {"x": 1}})
    assert updated.json()["status"] == "failed" and updated.json()["ended_at"] is not None
    assert send(svc, "POST", "/api/v1/runs/r1/heartbeat").status_code == 200
    listed = svc.get("/api/v1/runs", sort="metric:loss@count", order="desc").json()
    assert [r["id"] for r in listed["runs"]] == ["r2", "r1"] and listed["next_cursor"] is None
    assert [r["id"] for r in svc.get("/api/v1/runs", tag="a").json()["runs"]] == ["r1"]
    assert [r["id"] for r in svc.get("/api/v1/runs", config="lr=1.0").json()["runs"]] == ["r2"]
    assert [r["id"] for r in svc.get("/api/v1/runs", status="failed").json()["runs"]] == ["r2"]
    low = svc.get("/api/v1/runs", metric_max="loss@count:3").json()["runs"]
    assert [r["id"] for r in low] == ["r1"]
    first = svc.get("/api/v1/runs", sort="name", limit=1).json()
    assert [r["id"] for r in first["runs"]] == ["r1"]
    second = svc.get("/api/v1/runs", sort="name", limit=1, cursor=first["next_cursor"]).json()
    assert [r["id"] for r in second["runs"]] == ["r2"] and second["next_cursor"] is None
    foreign = svc.get("/api/v1/runs", cursor=first["next_cursor"])
    assert foreign.status_code == 409 and foreign.json()["error"] == "invalid_cursor"


def test_bad_fields_are_422_naming_them_and_unknown_runs_404(svc: Service) -> None:
    for body, field in (
        ({"id": "a/b"}, "id"),
        ({"id": "r", "tags": [""]}, "tags"),
        ({"id": "r", "started_at": "2025-01-01T00:00:00"}, "started_at"),
    ):
        response = send(svc, "POST", "/api/v1/runs", body)
        assert response.status_code == 422 and response.json()["detail"]["field"] == field
    for params, field in (({"limit": "0"}, "limit"), ({"sort": "size"}, "sort")):
        response = svc.get("/api/v1/runs", **params)
        assert response.status_code == 422 and response.json()["detail"]["field"] == field
    assert svc.get("/api/v1/runs/nope").status_code == 404
    assert send(svc, "PATCH", "/api/v1/runs/nope", {"notes": "x"}).status_code == 404
    assert send(svc, "POST", "/api/v1/runs/nope/heartbeat").status_code == 404
    reader = {"Authorization": f"Bearer {svc.read_only_token}"}
    refused = svc.client.post("/api/v1/runs", json={"id": "r"}, headers=reader)
    assert refused.status_code == 403
