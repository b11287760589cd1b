"""Shared helpers of the service tests: an app over a fresh SQLite store, tokens, clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import httpx
from starlette.testclient import TestClient

from crucible.service import ServiceConfig, TokenStore, create_app

HUGE = "<1e999>"


@attrs.frozen
class Service:
    client: TestClient
    token: str
    read_only_token: str

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def post(self, run_id: str, points: list[dict[str, object]], **headers: str) -> httpx.Response:
        # HUGE stands for a number literal too large for a float (JSON allows it; Python's
        # encoder cannot write one).
        body = json.dumps({"run_id": run_id, "metrics": points}).replace(f'"{HUGE}"', "1e999")
        return self.client.post(
            "/api/v1/metrics/batch",
            content=body,
            headers={**self.auth(), **headers, "Content-Type": "application/json"},
        )

    def get(self, path: str, **params: object) -> httpx.Response:
        return self.client.get(path, params=params, headers=self.auth())


@contextmanager
def service(tmp_path: Path, backend: str = "asyncio", **config: object) -> Iterator[Service]:
    tokens = TokenStore(tmp_path / "tokens.db")
    token = tokens.create("writer")
    read_only = tokens.create("reader", read_only=True)
    app = create_app(
        f"sqlite:///{tmp_path / 'metrics.db'}",
        tokens=tokens,
        config=ServiceConfig(**config),  # type: ignore[arg-type]
    )
    with TestClient(app, backend=backend) as client:
        yield Service(client, token, read_only)
    tokens.close()


def points(n: int, metric: str = "loss", start: int = 0) -> list[dict[str, object]]:
    return [{"metric": metric, "value": float(i) / 7, "step": start + i} for i in range(n)]
