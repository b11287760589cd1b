"""The remote store's HTTP transport to the metric service (httpx, imported on first use)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._delivery import Rejected
from ._errors import ServiceUnavailable

if TYPE_CHECKING:
    pass

__all__ = ["ServiceHttp"]


class ServiceHttp:
    """One connection pool for delivery, one for reads, so a read never queues behind a
    backlog of batches."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        import httpx

        self.url = url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._sender = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self._reader = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def post_batch(self, key: str, body: bytes) -> None:
        """POST one batch; `Rejected` if refused for good, other errors mean "retry"."""
        import httpx

        method, path = "POST", "/api/v1/metrics/batch"
        headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
        if key.startswith("@"):  # a run request: idempotent by itself, no key needed
            method, _, path = key[1:].partition(" ")
            headers = {"Content-Type": "application/json"}
        try:
            response = self._sender.request(method, path, content=body, headers=headers)
        except httpx.TransportError:
            # Once more on a fresh connection: a pooled one may have died with a restarted
            # server. Re-sending is safe, the idempotency key dedupes it.
            response = self._sender.request(method, path, content=body, headers=headers)
        status = response.status_code
        if status < 300:
            return
        if 400 <= status < 500 and status not in (408, 429):
            raise Rejected(f"HTTP {status}: {response.text[:300]}")
        response.raise_for_status()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> bytes | None:
        """GET `path`; None for a 404; `ServiceUnavailable` when unreachable or failing."""
        return self._request("GET", path, params)

    def delete(self, path: str) -> bytes | None:
        return self._request("DELETE", path, None)

    def _request(self, method: str, path: str, params: Mapping[str, Any] | None) -> bytes | None:
        import httpx

        try:
            response = self._reader.request(method, path, params=params)
        except httpx.HTTPError as error:
            raise ServiceUnavailable(
                f"metric service at {self.url} unreachable: {error}"
            ) from error
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise ServiceUnavailable(
                f"metric service at {self.url} answered {response.status_code}: "
                f"{response.text[:300]}"
            )
        return response.content

    def close(self) -> None:
        self._sender.close()
        self._reader.close()
