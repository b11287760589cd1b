"""The few counters `GET /metrics` exposes, in Prometheus' text format (version 0.0.4)."""

from __future__ import annotations

import time
from collections import Counter, deque

__all__ = ["ServiceStats"]

# Label values must come from a fixed set: a method copied from the request would let anyone
# create series without end. Every other method is counted as "OTHER".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "WS"})


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in pairs) + "}"


class ServiceStats:
    """Requests by route and status, points ingested, errors, and the recent ingest rate."""

    RATE_WINDOW = 10.0  # seconds the ingest-rate gauge averages over

    def __init__(self) -> None:
        self.requests: Counter[tuple[tuple[str, str], ...]] = Counter()
        self.errors: Counter[tuple[tuple[str, str], ...]] = Counter()
        self.ingested_total = 0
        self._recent: deque[tuple[float, int]] = deque()

    def count_request(self, method: str, route: str, status: int) -> None:
        """Count one response; `route` must be a route's name (or "unmatched")."""
        method = method if method in _METHODS else "OTHER"
        labels = (("method", method), ("route", route), ("status", str(status)))
        self.requests[labels] += 1
        if status >= 400:
            self.errors[(("route", route), ("status", str(status)))] += 1

    def count_ingest(self, points: int) -> None:
        self.ingested_total += points
        now = time.monotonic()
        self._recent.append((now, points))
        self._trim(now)

    def ingest_rate(self) -> float:
        now = time.monotonic()
        self._trim(now)
        return sum(n for _, n in self._recent) / self.RATE_WINDOW

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > self.RATE_WINDOW:
            self._recent.popleft()

    def render(self, *, subscribers: int, dropped_subscribers: int) -> str:
        lines = [
            "# HELP crucible_http_requests_total HTTP requests by method, route and status.",
            "# TYPE crucible_http_requests_total counter",
        ]
        lines += [
            f"crucible_http_requests_total{_labels(k)} {v}"
            for k, v in sorted(self.requests.items())
        ]
        lines += [
            "# HELP crucible_http_errors_total Responses with a 4xx or 5xx status.",
            "# TYPE crucible_http_errors_total counter",
        ]
        lines += [
            f"crucible_http_errors_total{_labels(k)} {v}" for k, v in sorted(self.errors.items())
        ]
        lines += [
            "# HELP crucible_metrics_ingested_total Metric points stored through the API.",
            "# TYPE crucible_metrics_ingested_total counter",
            f"crucible_metrics_ingested_total {self.ingested_total}",
            f"# HELP crucible_ingest_rate Points ingested per second, last {self.RATE_WINDOW:g} s.",
            "# TYPE crucible_ingest_rate gauge",
            f"crucible_ingest_rate {self.ingest_rate():.3f}",
            "# HELP crucible_ws_subscribers Live WebSocket subscribers.",
            "# TYPE crucible_ws_subscribers gauge",
            f"crucible_ws_subscribers {subscribers}",
            "# HELP crucible_ws_dropped_total Subscribers dropped for being too slow.",
            "# TYPE crucible_ws_dropped_total counter",
            f"crucible_ws_dropped_total {dropped_subscribers}",
        ]
        return "\n".join(lines) + "\n"
