"""`python -m crucible.serve` end to end: the token CLI, --no-auth, a slow WebSocket
subscriber over real TCP, and the server on PostgreSQL."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close
from websockets.sync.client import connect
from websockets.uri import parse_uri

from crucible.service import SLOW_CONSUMER_CLOSE_CODE
from crucible.testing import PostgresUnavailable, ServerProcess, throwaway_cluster


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crucible.serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_token_cli_creates_lists_and_revokes(tmp_path: Path) -> None:
    db = str(tmp_path / "tokens.db")
    created = serve("token", "create", "--name", "ci", "--read-only", "--tokens", db)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("crc_") and "shown once" in created.stderr
    assert token not in (tmp_path / "tokens.db").read_bytes().decode("latin-1")
    listed = serve("token", "list", "--tokens", db)
    assert listed.stdout.split("\t")[:2] == ["ci", "read-only"]
    again = serve("token", "create", "--name", "ci", "--tokens", db)
    assert again.returncode == 1 and "exists already" in again.stderr
    assert serve("token", "revoke", "--name", "ci", "--tokens", db).returncode == 0
    assert serve("token", "list", "--tokens", db).stdout == ""
    assert serve("token", "revoke", "--name", "ci", "--tokens", db).returncode == 1


def test_no_auth_warns_and_serves(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, extra_args=("--no-auth",))
    server.start()
    try:
        assert "WARNING: --no-auth" in server.startup_log
        response = httpx.post(
            f"{server.url}/api/v1/metrics/batch",
            json={"run_id": "r", "metrics": [{"metric": "loss", "value": 1.0}]},
        )
        assert response.status_code == 200
    finally:
        server.stop()


class StalledSubscriber:
    """A WebSocket client that reads nothing until asked, with a tiny TCP receive window:
    the websockets library over a plain socket (its own clients keep reading in a thread)."""

    def __init__(self, port: int, path: str, token: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}{path}"), max_size=None)
        request = self.protocol.connect()
        request.headers["Authorization"] = f"Bearer {token}"
        self.protocol.send_request(request)
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def drain(self) -> Close | None:
        """Read everything the server sent; return its close frame, if any."""
        self.sock.settimeout(30)
        while self.protocol.close_rcvd is None:
            data = self.sock.recv(65536)
            if not data:
                break
            self.protocol.receive_data(data)
            self.protocol.events_received()
        self.sock.close()
        return self.protocol.close_rcvd


def test_a_slow_subscriber_is_closed_with_4008_while_ingest_and_others_go_on(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path, extra_args=("--ws-queue", "2", "--rate-limit", "0"))
    server.start()
    auth = {"Authorization": f"Bearer {server.token}"}
    batches = 60
    try:
        slow = StalledSubscriber(server.port, "/ws/metrics/busy", server.token)
        url = f"ws://127.0.0.1:{server.port}/ws/metrics/busy"
        with connect(url, additional_headers=auth, max_size=None) as fast:
            fast_steps: list[int] = []

            def read_fast() -> None:
                while len(fast_steps) < batches * 1000:
                    message = json.loads(fast.recv(timeout=60))
                    fast_steps.extend(p["step"] for p in message["points"])

            reader = threading.Thread(target=read_fast)
            reader.start()
            with httpx.Client(base_url=server.url, headers=auth, timeout=30) as http:
                for b in range(batches):  # ~150 kB per message: the stalled socket fills
                    points = [
                        {
                            "metric": "loss",
                            "value": 1.0,
                            "step": b * 1000 + i,
                            "metadata": {"pad": "x" * 40},
                        }
                        for i in range(1000)
                    ]
                    response = http.post(
                        "/api/v1/metrics/batch", json={"run_id": "busy", "metrics": points}
                    )
                    assert response.status_code == 200  # ingest never waits for subscribers
            reader.join(timeout=60)
        assert fast_steps == list(range(batches * 1000))  # the fast one missed nothing
        closed = slow.drain()
        assert closed is not None and closed.code == SLOW_CONSUMER_CLOSE_CODE
        text = httpx.get(f"{server.url}/metrics", headers=auth).text
        assert "crucible_ws_dropped_total 1" in text
    finally:
        server.stop()


def test_server_on_postgresql(tmp_path: Path) -> None:
    import os

    try:
        cluster = throwaway_cluster(fast_unsafe=True)
        dsn = cluster.__enter__()
    except PostgresUnavailable as error:
        if os.environ.get("CRUCIBLE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here: {error}")
        pytest.skip(f"PostgreSQL unavailable: {error}")
    server = ServerProcess(tmp_path, store=dsn)
    try:
        server.start()
        auth = {"Authorization": f"Bearer {server.token}"}
        points = [{"metric": "loss", "value": float(i), "step": i} for i in range(20)]
        for _ in range(2):
            response = httpx.post(
                f"{server.url}/api/v1/metrics/batch",
                json={"run_id": "pg", "metrics": points},
                headers={**auth, "Idempotency-Key": "pg-1"},
            )
            assert response.status_code == 200
        stats = httpx.get(f"{server.url}/api/v1/runs/pg/metrics/loss/stats", headers=auth).json()
        assert stats["count"] == 20 and stats["mean"] == 9.5
        history = httpx.get(
            f"{server.url}/api/v1/runs/pg/metrics/loss", params={"max_points": 6}, headers=auth
        ).json()
        assert len(history["points"]) <= 6 and history["points"][-1]["step"] == 19
    finally:
        server.stop()
        cluster.__exit__(None, None, None)
