"""Tokens, read-only tokens, rate limits and the `--no-auth` mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from crucible.service import ServiceConfig, TokenStore, create_app
from crucible.service._ratelimit import RateLimiter

from .service_kit import points, service

ROUTES = [
    ("GET", "/api/v1/runs"),
    ("GET", "/api/v1/runs/r/metrics"),
    ("GET", "/api/v1/runs/r/metrics/latest"),
    ("GET", "/api/v1/runs/r/metrics/loss"),
    ("GET", "/api/v1/runs/r/metrics/loss/stats"),
    ("GET", "/api/v1/runs/r/system"),
    ("POST", "/api/v1/metrics/batch"),
    ("POST", "/api/v1/runs/r/system/batch"),
    ("DELETE", "/api/v1/runs/r"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_api_route_needs_a_valid_token(tmp_path: Path, method: str, path: str) -> None:
    with service(tmp_path) as svc:
        for headers in ({}, {"Authorization": "Bearer crc_forged"}, {"Authorization": "Basic x"}):
            response = svc.client.request(method, path, headers=headers)
            assert response.status_code == 401, (headers, response.text)
            assert response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")


def test_read_only_token_reads_but_cannot_write(tmp_path: Path) -> None:
    with service(tmp_path) as svc:
        svc.post("run-1", points(2))
        reader = svc.auth(svc.read_only_token)
        assert svc.client.get("/api/v1/runs/run-1/metrics", headers=reader).status_code == 200
        for method, path in [("POST", "/api/v1/metrics/batch"), ("DELETE", "/api/v1/runs/run-1")]:
            response = svc.client.request(method, path, headers=reader, json={})
            assert response.status_code == 403 and response.json()["error"] == "forbidden"
        assert svc.client.get("/api/v1/runs/run-1/metrics", headers=reader).json()["total"] == 2


def test_websocket_needs_a_token(tmp_path: Path) -> None:
    with service(tmp_path) as svc:
        for subprotocols in ([], ["crucible", "bearer.crc_forged"]):
            with pytest.raises(Exception) as caught:  # noqa: PT011, SIM117
                with svc.client.websocket_connect("/ws/metrics/r", subprotocols=subprotocols):
                    pass
            assert getattr(caught.value, "status_code", None) == 401


def test_tokens_are_stored_hashed_and_revocable(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.db")
    token = store.create("alice")
    assert token.encode() not in (tmp_path / "tokens.db").read_bytes()
    assert store.lookup(token) is not None and store.lookup(token + "x") is None
    with pytest.raises(ValueError, match="exists already"):
        store.create("alice")
    assert store.revoke("alice")
    assert store.lookup(token) is None
    assert [t.name for t in store.list()] == []


def test_rate_limit_is_429_with_retry_after_per_token(tmp_path: Path) -> None:
    with service(tmp_path, rate_limit=0.5, rate_burst=3) as svc:
        answers = [svc.get("/api/v1/runs").status_code for _ in range(5)]
        assert answers == [200, 200, 200, 429, 429]
        limited: Any = svc.get("/api/v1/runs")
        assert limited.json()["error"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        # Another token has its own bucket.
        other = svc.client.get("/api/v1/runs", headers=svc.auth(svc.read_only_token))
        assert other.status_code == 200


def test_token_bucket_refills_with_time() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=2, clock=lambda: now[0])
    assert [limiter.check("k") for _ in range(2)] == [0.0, 0.0]
    assert limiter.check("k") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.check("k") == 0.0
    assert limiter.check("other") == 0.0


def test_no_auth_mode_serves_without_tokens(tmp_path: Path) -> None:
    app = create_app(f"sqlite:///{tmp_path / 'm.db'}", tokens=None, config=ServiceConfig())
    with TestClient(app) as client:
        response = client.post("/api/v1/metrics/batch", json={"run_id": "r", "metrics": points(2)})
        assert response.status_code == 200
        assert client.get("/api/v1/runs").json()["runs"][0]["run_id"] == "r"
