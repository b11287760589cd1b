"""Hypothesis: what the API stores is what the reference store would hold, a batch with one
bad point stores nothing, and any name is either accepted and readable back or refused."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.metrics import MemoryMetricsStore, MetricRecord

from .service_kit import service

NAMES = st.sampled_from(["loss", "train/loss", "eval/acc:top-1", "lr_0.5", "a/b/c"])
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)
STEPS = st.none() | st.integers(min_value=0, max_value=2**63 - 1)
TIMES = st.integers(min_value=0, max_value=10**6).map(
    lambda s: datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=s)
)
# Stores refuse NUL, and a lone surrogate cannot travel as UTF-8: "good" points avoid both.
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=5)
METADATA = st.dictionaries(TEXT, st.integers() | TEXT, max_size=2)
POINT = st.builds(
    lambda metric, value, step, ts, metadata: {
        "metric": metric,
        "value": value,
        "step": step,
        "timestamp": ts.isoformat(),
        "metadata": metadata,
    },
    NAMES,
    FINITE,
    STEPS,
    TIMES,
    METADATA,
)
BAD = st.sampled_from(
    [
        {"metric": "loss", "value": "1"},
        {"metric": "loss", "value": 1.0, "step": -5},
        {"metric": "../up", "value": 1.0},
        {"metric": "loss", "value": 1.0, "timestamp": "2025-01-01T00:00:00"},
        {"metric": "loss", "value": 1.0, "metadata": []},
        {"metric": "loss", "value": None},
    ]
)
SETTINGS = settings(max_examples=60, deadline=None)
_runs = itertools.count()


def reference_read(run_id: str, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async def read() -> list[MetricRecord]:
        store = MemoryMetricsStore()
        await store.record_many(
            [
                MetricRecord(
                    run_id,
                    p["metric"],
                    p["value"],
                    p["step"],
                    datetime.fromisoformat(p["timestamp"]),
                    p["metadata"],
                )
                for p in points
            ]
        )
        return await store.read(run_id)

    import msgspec

    return list(msgspec.json.decode(msgspec.json.encode(anyio.run(read))))


def test_stored_points_read_back_like_the_reference_store(tmp_path: Path) -> None:
    with service(tmp_path, rate_limit=1e6, rate_burst=10**6) as svc:

        @SETTINGS
        @given(points=st.lists(POINT, min_size=1, max_size=30))
        def check(points: list[dict[str, Any]]) -> None:
            run_id = f"run-{next(_runs)}"
            assert svc.post(run_id, points).status_code == 200
            stored = svc.get(f"/api/v1/runs/{run_id}/metrics", limit=10_000).json()["points"]
            assert stored == reference_read(run_id, points)

        check()


def test_a_batch_with_one_bad_point_stores_nothing(tmp_path: Path) -> None:
    with service(tmp_path, rate_limit=1e6, rate_burst=10**6) as svc:

        @SETTINGS
        @given(points=st.lists(POINT, max_size=10), bad=BAD, where=st.integers(0, 10))
        def check(points: list[dict[str, Any]], bad: dict[str, Any], where: int) -> None:
            index = min(where, len(points))
            run_id = f"run-{next(_runs)}"
            response = svc.post(run_id, [*points[:index], bad, *points[index:]])
            assert response.status_code == 422
            assert response.json()["detail"]["index"] == index
            assert svc.get(f"/api/v1/runs/{run_id}/metrics").status_code == 404

        check()
        assert svc.get("/api/v1/runs").json()["runs"] == []


def test_any_name_is_either_refused_or_readable_back(tmp_path: Path) -> None:
    with service(tmp_path, rate_limit=1e6, rate_burst=10**6) as svc:
        accepted: set[str] = set()

        @SETTINGS
        @given(run_id=st.text(max_size=40), metric=st.text(max_size=40))
        def check(run_id: str, metric: str) -> None:
            response = svc.post(run_id, [{"metric": metric, "value": 1.0}])
            assert response.status_code in (200, 422), response.text
            if response.status_code == 200:
                accepted.add(run_id)
                stats = svc.get(f"/api/v1/runs/{run_id}/metrics/{metric}/stats").json()
                assert stats["metric"] == metric and stats["run_id"] == run_id
            runs = {r["run_id"] for r in svc.get("/api/v1/runs").json()["runs"]}
            assert runs == accepted  # a refused batch left nothing behind

        check()
