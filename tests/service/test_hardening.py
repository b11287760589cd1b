"""What an audit with outside clients found, each fixed: nesting limits, Content-Type,
no exception text in answers, bounded Prometheus labels, deadlines on slow clients, and
token checks that never stall the event loop."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from crucible.metrics import MemoryMetricsStore, RunPage, RunQuery, SqliteMetricsStore
from crucible.service import ServiceConfig, TokenStore, create_app
from crucible.testing import service_in_thread

from . import raw_http
from .service_kit import points, service


def nested_batch(depth: int) -> bytes:
    metadata = '{"tree": ' + "[" * depth + "]" * depth + "}"
    return (
        '{"run_id": "run", "metrics": [{"metric": "loss", "value": 1.0, "metadata": '
        + metadata
        + "}]}"
    ).encode()


@pytest.mark.parametrize("depth", [31, 40, 965, 5000])
def test_deeply_nested_metadata_is_422_and_stores_nothing(tmp_path: Path, depth: int) -> None:
    with service(tmp_path) as svc:
        response = svc.client.post(
            "/api/v1/metrics/batch",
            content=nested_batch(depth),
            headers={**svc.auth(), "Content-Type": "application/json"},
        )
        if depth <= 31:  # 31 lists inside the metadata object: 32 levels, the limit
            assert response.status_code == 200
            return
        assert response.status_code == 422, response.text
        assert response.json()["detail"]["field"] == "metadata"
        assert "nested more than 32 levels" in response.json()["detail"]["problem"]
        assert svc.get("/api/v1/runs/run/metrics").status_code == 404


def test_a_refused_deep_batch_keeps_the_keep_alive_connection(tmp_path: Path) -> None:
    store = SqliteMetricsStore(tmp_path / "metrics.db", durable=True)
    try:
        config = ServiceConfig(rate_limit=0)
        with service_in_thread(store, config=config) as url, raw_http.connect(url) as sock:
            for depth in (965, 5000):
                sock.sendall(
                    raw_http.request(
                        "/api/v1/metrics/batch",
                        method="POST",
                        body=nested_batch(depth),
                        headers={"Content-Type": "application/json"},
                    )
                )
                assert raw_http.read_response(sock)[0] == 422
            sock.sendall(raw_http.request("/healthz"))
            assert raw_http.read_response(sock) == (200, b'{"status":"ok"}')
    finally:
        store.sync.close()


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 415),
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/json; charset=utf-8", 200),
        ("application/JSON", 200),
    ],
)
def test_bodies_must_be_declared_json(
    tmp_path: Path, content_type: str | None, status: int
) -> None:
    with service(tmp_path) as svc:
        headers = svc.auth()
        if content_type is not None:
            headers["Content-Type"] = content_type
        body = json.dumps({"run_id": "run", "metrics": points(1)}).encode()
        for path in ("/api/v1/metrics/batch", "/api/v1/runs/run/system/batch"):
            sent = body if path.endswith("metrics/batch") else b'{"metrics": []}'
            response = svc.client.post(path, content=sent, headers=headers)
            assert response.status_code == status, (path, response.text)
            if status == 415:
                assert response.json()["error"] == "unsupported_media_type"


class _BrokenStore(MemoryMetricsStore):
    async def list_runs(self, query: RunQuery) -> RunPage:  # what GET /api/v1/runs reads
        raise RuntimeError("password=hunter2 in /srv/secret/path")


def test_a_500_carries_a_request_id_the_log_has_and_no_exception_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(_BrokenStore(), tokens=None)
    with TestClient(app) as client, caplog.at_level(logging.ERROR, "crucible.service"):
        response = client.get("/api/v1/runs")
        assert client.get("/healthz").status_code == 200  # the server goes on
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "internal" and "hunter2" not in response.text
    assert "RuntimeError" not in response.text and "secret" not in response.text
    request_id = body["request_id"]
    assert response.headers["x-request-id"] == request_id
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and "hunter2" in str(logged[0].exc_info[1])  # type: ignore[index]


def samples(text: str, name: str) -> list[dict[str, str]]:
    """The label sets of metric `name` in Prometheus text, read by prometheus_client."""
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found.append(dict(sample.labels))
    return found


def test_made_up_methods_and_paths_add_no_series_and_401s_name_their_route(
    tmp_path: Path,
) -> None:
    with service(tmp_path) as svc:
        for n in range(20):
            svc.client.request(f"BREW{n}", "/api/v1/runs")
            svc.client.request(f"X{n}", f"/nowhere/{n}")
            svc.client.get(f"/api/v1/nothing-{n}")
        assert svc.client.get("/api/v1/runs").status_code == 401
        assert svc.client.delete("/api/v1/runs/r").status_code == 401
        assert svc.client.post("/api/v1/metrics/batch").status_code == 401
        reader = {"Authorization": f"Bearer {svc.read_only_token}"}
        assert svc.client.delete("/api/v1/runs/r", headers=reader).status_code == 403
        labels = samples(svc.get("/metrics").text, "crucible_http_requests_total")
    assert {label["method"] for label in labels} <= {"GET", "POST", "DELETE", "OTHER"}
    assert {label["route"] for label in labels} == {
        "runs",
        "run",
        "post_batch",
        "unmatched",
    }
    assert {"method": "GET", "route": "runs", "status": "401"} in labels
    assert {"method": "DELETE", "route": "run", "status": "403"} in labels
    assert len(labels) <= 10  # 60 odd requests, a handful of series


def test_429_is_labelled_with_its_route(tmp_path: Path) -> None:
    with service(tmp_path, rate_limit=1.0, rate_burst=1) as svc:
        statuses = [svc.get("/api/v1/runs").status_code for _ in range(3)]
        assert 429 in statuses
        reader = svc.auth(svc.read_only_token)  # its own rate-limit bucket
        labels = samples(
            svc.client.get("/metrics", headers=reader).text, "crucible_http_requests_total"
        )
    assert {"method": "GET", "route": "runs", "status": "429"} in labels


@pytest.fixture
def slow_client_server() -> Iterator[str]:
    config = ServiceConfig(rate_limit=0, header_timeout=0.3, body_timeout=0.3)
    with service_in_thread(MemoryMetricsStore(), config=config) as url:
        yield url


def test_a_connection_that_sends_headers_too_slowly_is_closed(slow_client_server: str) -> None:
    with raw_http.connect(slow_client_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")  # and never the blank line
        assert raw_http.closed_by_server(sock)
    with raw_http.connect(slow_client_server) as sock:  # nothing at all, not even a byte
        assert raw_http.closed_by_server(sock)


def test_a_connection_that_sends_its_body_too_slowly_is_closed(slow_client_server: str) -> None:
    with raw_http.connect(slow_client_server) as sock:
        head = raw_http.request(
            "/api/v1/metrics/batch",
            method="POST",
            body=b"x" * 100,
            headers={"Content-Type": "application/json"},  # so the server waits for it
        )
        sock.sendall(head[:-90])  # the headers and 10 of the 100 bytes promised
        assert raw_http.closed_by_server(sock)


def test_the_deadlines_leave_a_prompt_client_alone(slow_client_server: str) -> None:
    with raw_http.connect(slow_client_server) as sock:
        for _ in range(3):
            sock.sendall(raw_http.request("/healthz"))
            assert raw_http.read_response(sock)[0] == 200


class _WatchedTokens(TokenStore):
    """Tells the test when a lookup starts and ends; waits long for a locked database so
    only the test decides when the lock goes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._db.execute("PRAGMA busy_timeout = 120000")
        self.entered = threading.Event()
        self.finished = threading.Event()

    def lookup(self, token: str) -> Any:
        self.entered.set()
        try:
            return super().lookup(token)
        finally:
            self.finished.set()


def test_a_locked_token_database_does_not_stall_other_requests(tmp_path: Path) -> None:
    tokens = _WatchedTokens(tmp_path / "tokens.db")
    token = tokens.create("writer")
    locker = sqlite3.connect(tmp_path / "tokens.db", isolation_level=None)
    outcome: dict[str, int] = {}
    try:
        with service_in_thread(MemoryMetricsStore(), tokens=tokens) as url:
            locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock

            def authenticated() -> None:
                headers = {"Authorization": f"Bearer {token}"}
                outcome["runs"] = httpx.get(f"{url}/api/v1/runs", headers=headers).status_code

            waiting = threading.Thread(target=authenticated)
            waiting.start()
            assert tokens.entered.wait(60), "the token lookup never started"
            assert httpx.get(f"{url}/healthz", timeout=60).status_code == 200
            assert not tokens.finished.is_set()  # /healthz answered while the lookup waited
            locker.execute("ROLLBACK")
            waiting.join(60)
            assert outcome == {"runs": 200}
    finally:
        locker.close()
        tokens.close()
