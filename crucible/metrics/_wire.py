"""The metric service's JSON bodies, as the remote store writes and reads them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from ._record import MetricRecord, MetricSummary

__all__ = ["decode_latest", "decode_page", "decode_summary", "encode_requests"]


class _WirePoint(msgspec.Struct, omit_defaults=True):
    metric: str
    value: float
    step: int | None
    timestamp: datetime
    metadata: dict[str, Any] = {}


class _WireBatch(msgspec.Struct):
    """The body of POST /api/v1/metrics/batch."""

    run_id: str
    metrics: list[_WirePoint]


class _Page(msgspec.Struct):
    points: list[MetricRecord]
    total: int = 0


class _Latest(msgspec.Struct):
    latest: dict[str, MetricRecord]


_encode = msgspec.json.encode
_page_decoder = msgspec.json.Decoder(_Page)
_latest_decoder = msgspec.json.Decoder(_Latest)
decode_summary = msgspec.json.Decoder(MetricSummary).decode


def decode_page(body: bytes) -> tuple[list[MetricRecord], int]:
    """The points of one page of a series read, and the series' total count."""
    page = _page_decoder.decode(body)
    return page.points, page.total


def decode_latest(body: bytes) -> dict[str, MetricRecord]:
    return _latest_decoder.decode(body).latest


def encode_requests(
    records: list[MetricRecord], key: str | None, batch_size: int
) -> list[tuple[str, bytes]]:
    """(idempotency key, body) per request: one run per request, at most `batch_size` points.

    A caller's key is extended with the part's number within its run (the service scopes
    keys per token and run), so re-sending the same keyed batch produces the same keys and
    the server stores each part once, while the same key used for another run is that
    run's own.
    """
    by_run: dict[str, list[_WirePoint]] = {}
    for r in records:
        by_run.setdefault(r.run_id, []).append(
            _WirePoint(r.metric, r.value, r.step, r.timestamp, r.metadata)
        )
    parts: list[tuple[str, bytes]] = []
    for run_id, points in by_run.items():
        for number, start in enumerate(range(0, len(points), batch_size)):
            body = _encode(_WireBatch(run_id, points[start : start + batch_size]))
            part_key = uuid.uuid4().hex if key is None else f"{key}#{number}"
            parts.append((part_key, body))
    return parts
