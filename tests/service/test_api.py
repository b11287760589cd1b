"""Every REST endpoint's success and error paths, on asyncio and trio."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .service_kit import HUGE, Service, points, service


@pytest.fixture(params=["asyncio", "trio"])
def svc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    with service(tmp_path, request.param, rate_limit=10_000.0, rate_burst=10_000) as s:
        yield s


def stored(svc: Service, run_id: str = "run-1") -> list[dict[str, Any]]:
    response: Any = svc.get(f"/api/v1/runs/{run_id}/metrics", limit=10_000)
    if response.status_code == 404:
        return []
    return list(response.json()["points"])


def test_batch_is_stored_and_read_back_in_step_order(svc: Service) -> None:
    batch = [*points(5)[::-1], {"metric": "train/acc", "value": 1, "metadata": {"split": "a"}}]
    response: Any = svc.post("run-1", batch)
    assert response.status_code == 200, response.text
    assert response.json() == {"run_id": "run-1", "accepted": 6}
    loss = [p for p in stored(svc) if p["metric"] == "loss"]
    assert [p["step"] for p in loss] == [0, 1, 2, 3, 4]
    assert [p["value"] for p in loss] == [i / 7 for i in range(5)]
    acc = [p for p in stored(svc) if p["metric"] == "train/acc"]
    assert acc[0]["value"] == 1.0 and acc[0]["metadata"] == {"split": "a"}


def test_explicit_timestamps_are_kept_in_utc(svc: Service) -> None:
    svc.post("run-1", [{"metric": "m", "value": 1, "timestamp": "2025-01-02T05:04:05+02:00"}])
    assert stored(svc)[0]["timestamp"] == "2025-01-02T03:04:05Z"


def test_batch_over_the_limit_is_413_with_the_limit(svc: Service) -> None:
    response: Any = svc.post("run-1", points(1001))
    assert response.status_code == 413
    assert response.json()["error"] == "batch_too_large"
    assert response.json()["detail"]["limit"] == 1000
    assert stored(svc) == []
    assert svc.post("run-1", points(1000)).status_code == 200


def test_idempotency_key_stores_a_resent_batch_once(svc: Service) -> None:
    for _ in range(3):
        response: Any = svc.post("run-1", points(10), **{"Idempotency-Key": "batch-1"})
        assert response.status_code == 200
    svc.post("run-1", points(10, start=10), **{"Idempotency-Key": "batch-2"})
    assert [p["step"] for p in stored(svc)] == list(range(20))
    assert "crucible_metrics_ingested_total 20" in svc.get("/metrics").text


@pytest.mark.parametrize(
    ("point", "field", "status"),
    [
        ({"metric": "loss", "value": "high"}, "value", 422),
        ({"metric": "loss", "value": HUGE}, "value", 422),
        ({"metric": "loss", "value": True}, "value", 422),
        ({"metric": "loss", "value": 1.0, "step": -1}, "step", 422),
        ({"metric": "loss", "value": 1.0, "step": 1.5}, "step", 422),
        ({"metric": "loss", "value": 1.0, "timestamp": "2025-01-02T03:04:05"}, "timestamp", 422),
        ({"metric": "loss", "value": 1.0, "colour": "red"}, None, 422),
        ({"metric": "../etc/passwd", "value": 1.0}, "metric", 422),
        ({"metric": "x'); DROP TABLE metrics;--", "value": 1.0}, "metric", 422),
        ({"metric": "latest", "value": 1.0}, "metric", 422),
        ({"metric": "loss/stats", "value": 1.0}, "metric", 422),
        ({"metric": "", "value": 1.0}, "metric", 422),
        ({"value": 1.0}, None, 422),
    ],
)
def test_one_bad_point_rejects_the_batch_naming_index_and_field(
    svc: Service, point: dict[str, object], field: str | None, status: int
) -> None:
    response: Any = svc.post("run-1", [*points(3), point, *points(2, start=3)])
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == "invalid_record"
    assert body["detail"]["index"] == 3
    if field is not None:
        assert body["detail"]["field"] == field
    assert stored(svc) == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"run_id":"run-1","metrics":[{"metric":"loss","value":NaN}]}',
        b'{"run_id":"run-1","metrics":[{"metric":"loss","value":1.0}',
        b"not json",
        b"",
    ],
)
def test_malformed_json_is_400_and_stores_nothing(svc: Service, body: bytes) -> None:
    headers = {**svc.auth(), "Content-Type": "application/json"}
    response = svc.client.post("/api/v1/metrics/batch", content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"
    assert stored(svc) == []


@pytest.mark.parametrize("run_id", ["../../etc", "a/b", "", "r' OR '1'='1", ".hidden", "x" * 129])
def test_bad_run_ids_are_refused(svc: Service, run_id: str) -> None:
    response: Any = svc.post(run_id, points(1))
    assert response.status_code == 422
    assert response.json()["detail"]["field"] == "run_id"
    assert svc.get("/api/v1/runs").json()["runs"] == []


def test_wrong_top_level_types_are_422(svc: Service) -> None:
    for body in ({"run_id": 5, "metrics": []}, {"run_id": "r", "metrics": {}}, [1, 2]):
        response = svc.client.post("/api/v1/metrics/batch", json=body, headers=svc.auth())
        assert response.status_code == 422, body


def test_body_over_the_size_limit_is_413(tmp_path: Path) -> None:
    with service(tmp_path, max_body_bytes=1000) as svc:
        response: Any = svc.post("run-1", points(100))
        assert response.status_code == 413
        assert response.json()["detail"]["limit_bytes"] == 1000
        # A chunked body (no Content-Length) is cut off as it streams in.
        chunks = iter([b'{"run_id":"run-1","metrics":[', b" " * 2000, b"]}"])
        response = svc.client.post(
            "/api/v1/metrics/batch",
            content=chunks,
            headers={**svc.auth(), "Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert stored(svc) == []


def test_runs_lists_latest_values_and_summary(svc: Service) -> None:
    svc.post("run-1", points(3) + points(2, metric="acc"))
    svc.post("run-2", points(1))
    runs = {r["run_id"]: r for r in svc.get("/api/v1/runs").json()["runs"]}
    assert set(runs) == {"run-1", "run-2"}
    one = runs["run-1"]
    assert one["status"] == "running" and one["metric_count"] == 2 and one["last_step"] == 2
    assert one["latest"]["loss"]["value"] == 2 / 7 and one["latest"]["acc"]["step"] == 1


def test_read_filters_and_pages(svc: Service) -> None:
    svc.post("run-1", points(50) + points(50, metric="acc"))
    get = lambda **q: svc.get("/api/v1/runs/run-1/metrics", **q).json()  # noqa: E731
    body = get(metric="loss", step_min=10, step_max=19)
    assert [p["step"] for p in body["points"]] == list(range(10, 20)) and body["total"] == 10
    body = get(metric="acc", limit=5, offset=45)
    assert [p["step"] for p in body["points"]] == list(range(45, 50))
    assert get(until="2000-01-01T00:00:00Z")["points"] == []
    assert get(since="2000-01-01T00:00:00Z")["total"] == 100


@pytest.mark.parametrize(
    "query",
    [{"limit": "ten"}, {"limit": 0}, {"limit": 10**9}, {"step_min": -1}, {"since": "yesterday"}],
)
def test_bad_query_parameters_are_422(svc: Service, query: dict[str, object]) -> None:
    svc.post("run-1", points(1))
    response: Any = svc.get("/api/v1/runs/run-1/metrics", **query)
    assert response.status_code == 422 and response.json()["error"] == "invalid_parameter"


def test_history_is_downsampled_keeping_spikes(svc: Service) -> None:
    series = [{"metric": "loss", "value": 1.0, "step": i} for i in range(900)]
    series[437]["value"] = 50.0
    series[611]["value"] = -50.0
    svc.post("run-1", series)
    body = svc.get("/api/v1/runs/run-1/metrics/loss", max_points=30).json()
    values = [p["value"] for p in body["points"]]
    assert len(values) <= 30 and max(values) == 50.0 and min(values) == -50.0
    steps = [p["step"] for p in body["points"]]
    assert steps == sorted(steps) and steps[-1] == 899


def test_latest_stats_and_missing_things(svc: Service) -> None:
    svc.post("run-1", points(4) + points(1, metric="train/acc"))
    latest = svc.get("/api/v1/runs/run-1/metrics/latest").json()["latest"]
    assert latest["loss"]["step"] == 3 and latest["train/acc"]["step"] == 0
    stats = svc.get("/api/v1/runs/run-1/metrics/loss/stats").json()
    values = [i / 7 for i in range(4)]
    mean = sum(values) / 4
    assert stats["count"] == 4 and math.isclose(stats["mean"], mean)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert math.isclose(stats["std"], std) and stats["last_step"] == 3
    nested = svc.get("/api/v1/runs/run-1/metrics/train/acc/stats").json()
    assert nested["count"] == 1
    for path, error in [
        ("/api/v1/runs/nope/metrics/latest", "run_not_found"),
        ("/api/v1/runs/nope/metrics", "run_not_found"),
        ("/api/v1/runs/nope/metrics/loss", "run_not_found"),
        ("/api/v1/runs/run-1/metrics/nope", "metric_not_found"),
        ("/api/v1/runs/run-1/metrics/nope/stats", "metric_not_found"),
        ("/api/v1/runs/nope/system", "run_not_found"),
        ("/api/v1/nowhere", "not_found"),
    ]:
        response: Any = svc.get(path)
        assert response.status_code == 404 and response.json()["error"] == error, path


def test_delete_run(svc: Service) -> None:
    svc.post("run-1", points(3))
    svc.post("run-2", points(2))
    response = svc.client.delete("/api/v1/runs/run-1", headers=svc.auth())
    assert response.json() == {"run_id": "run-1", "deleted": 3}
    assert stored(svc) == [] and len(stored(svc, "run-2")) == 2
    assert svc.client.delete("/api/v1/runs/run-1", headers=svc.auth()).status_code == 404


def test_system_metrics(svc: Service) -> None:
    samples = [{"metric": "cpu_percent", "value": 12.5}, {"metric": "memory_percent", "value": 40}]
    response = svc.client.post(
        "/api/v1/runs/run-1/system/batch", json={"metrics": samples}, headers=svc.auth()
    )
    assert response.status_code == 200, response.text
    series = svc.get("/api/v1/runs/run-1/system").json()["series"]
    assert series["cpu_percent"][0]["value"] == 12.5 and series["memory_percent"][0]["value"] == 40
    bad = svc.client.post(
        "/api/v1/runs/run-1/system/batch",
        json={"metrics": [{"metric": "cpu", "value": "lots"}]},
        headers=svc.auth(),
    )
    assert bad.status_code == 422


def test_health_prometheus_and_openapi(svc: Service) -> None:
    assert svc.client.get("/healthz").json() == {"status": "ok"}
    svc.post("run-1", points(7))
    svc.post("run-1", [{"metric": "loss", "value": "x"}])
    text = svc.get("/metrics").text
    assert "crucible_metrics_ingested_total 7" in text
    assert 'crucible_http_requests_total{method="POST",route="post_batch",status="200"} 1' in text
    assert 'crucible_http_errors_total{route="post_batch",status="422"} 1' in text
    schema = svc.client.get("/api/v1/openapi.json").json()
    assert (
        "/api/v1/metrics/batch" in schema["paths"] and "BatchIn" in schema["components"]["schemas"]
    )


def test_dashboard_page_is_served(svc: Service) -> None:
    page = svc.client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert svc.client.get("/static/uPlot.iife.min.js").status_code == 200
