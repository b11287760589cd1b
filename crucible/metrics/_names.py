"""The metric service's naming rules for run ids and metric names.

The service enforces them on every request, and `RemoteMetricsStore` applies them before
buffering, so a record the service would refuse is refused at `record()` time instead of
after a round trip. A run id names a URL path segment; a metric name may hold slashes.
"""

from __future__ import annotations

import re

from ._errors import InvalidRecord

__all__ = ["METRIC_SHAPE", "check_metric_name", "check_run_id", "names_valid"]

# Run ids name a path segment: letters, digits and . _ - : (no slash, no leading dot).
_RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}")
# Metric names may be grouped with slashes ("train/loss"), one non-empty segment at a time.
_METRIC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]*(/[A-Za-z0-9_][A-Za-z0-9_.:\-]*)*")
METRIC_SHAPE = _METRIC  # the pattern alone (queries match reserved names to nothing)
_METRIC_MAX = 200
# These suffixes name other routes under /runs/{id}/metrics/, so no metric may take them.
_RESERVED_METRIC = ("latest",)
_RESERVED_SUFFIX = "/stats"


def check_run_id(run_id: object) -> str:
    """`run_id` if the service accepts it, else `InvalidRecord` naming the rule."""
    if type(run_id) is not str or not _RUN_ID.fullmatch(run_id):
        raise InvalidRecord(
            "run_id",
            f"must be 1-128 letters, digits or . _ - : not starting with . - or :, got {run_id!r}"[
                :200
            ],
        )
    return run_id


def check_metric_name(metric: object) -> str:
    """`metric` if the service accepts it, else `InvalidRecord` naming the rule."""
    if (
        type(metric) is not str
        or len(metric) > _METRIC_MAX
        or not _METRIC.fullmatch(metric)
        or metric in _RESERVED_METRIC
        or metric.endswith(_RESERVED_SUFFIX)
    ):
        raise InvalidRecord(
            "metric",
            f"must be 1-{_METRIC_MAX} characters: '/'-separated segments of letters, digits "
            f"or . _ - : (not 'latest', not ending in '/stats'), got {metric!r}"[:240],
        )
    return metric


def names_valid(run_id: str, metric: str | None = None) -> bool:
    """Whether the service could hold this run (and metric): others have no records."""
    try:
        check_run_id(run_id)
        if metric is not None:
            check_metric_name(metric)
    except InvalidRecord:
        return False
    return True
