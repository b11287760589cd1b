"""The service's error responses: always JSON `{error, detail}` with the right status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.responses import Response

__all__ = ["ApiError", "json_response"]

_encode = msgspec.json.encode


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response encoded by msgspec (it knows MetricRecord and datetimes)."""
    return Response(_encode(body), status, headers, media_type="application/json")


class ApiError(Exception):
    """An error a handler raises to answer the client; `error` is a short stable code."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: Any,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})

    def response(self) -> Response:
        return json_response(
            {"error": self.error, "detail": self.detail}, self.status, self.headers
        )
