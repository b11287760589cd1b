"""Durable metric stores: record every metric of a run, lose none, never stall training.

`open_store(url)` picks an adapter from a URL (`memory://`, `jsonl:///path/metrics.jsonl` or
a bare path, `sqlite:///path.db`, `postgresql://...`,
`http://host:port` for the metric service); every adapter implements the
`MetricsStore` protocol and passes the same contract tests. See docs/metrics.md.
"""

from typing import TYPE_CHECKING

from ._errors import (
    CorruptLinesWarning,
    InvalidRecord,
    MetricNotFound,
    MetricsError,
    ServiceUnavailable,
    StoreClosed,
    StoreWriteError,
)
from ._jsonl import JsonlMetricsStore
from ._jsonl_file import Truncation
from ._jsonl_lines import BadLine, ScanReport, read_metrics_file
from ._memory import MemoryMetricsStore
from ._names import check_metric_name, check_run_id
from ._open import open_store
from ._protocol import MetricsStore, SyncMetrics
from ._record import MetricRecord, MetricSummary, coerce_batch
from ._remote import RemoteMetricsStore
from ._remote_runs import RemoteRuns, git_commit
from ._runs import (
    DEFAULT_STALE_AFTER,
    CheckpointRef,
    ConfigFilter,
    InvalidRun,
    MetricRange,
    MetricStat,
    ModelVersionRef,
    RunNotFound,
    RunPage,
    RunQuery,
    RunRecord,
    RunSpec,
    RunStore,
    RunUpdate,
)
from ._sqlite import SqliteMetricsStore
from ._streaming import (
    GetMetrics,
    Observe,
    ObserveMany,
    ObserveRequest,
    Reset,
    SeriesSummary,
    StreamingAggregator,
    StreamingMetrics,
    StreamingSnapshot,
)

if TYPE_CHECKING:  # imported lazily below: it needs asyncpg, the `postgres` extra
    from ._postgres import PostgresMetricsStore

__all__ = [
    "DEFAULT_STALE_AFTER",
    "BadLine",
    "CheckpointRef",
    "ConfigFilter",
    "CorruptLinesWarning",
    "GetMetrics",
    "InvalidRecord",
    "InvalidRun",
    "JsonlMetricsStore",
    "MemoryMetricsStore",
    "MetricNotFound",
    "MetricRange",
    "MetricRecord",
    "MetricStat",
    "MetricSummary",
    "MetricsError",
    "MetricsStore",
    "ModelVersionRef",
    "Observe",
    "ObserveMany",
    "ObserveRequest",
    "PostgresMetricsStore",
    "RemoteMetricsStore",
    "RemoteRuns",
    "Reset",
    "RunNotFound",
    "RunPage",
    "RunQuery",
    "RunRecord",
    "RunSpec",
    "RunStore",
    "RunUpdate",
    "ScanReport",
    "SeriesSummary",
    "ServiceUnavailable",
    "SqliteMetricsStore",
    "StoreClosed",
    "StoreWriteError",
    "StreamingAggregator",
    "StreamingMetrics",
    "StreamingSnapshot",
    "SyncMetrics",
    "Truncation",
    "check_metric_name",
    "check_run_id",
    "coerce_batch",
    "git_commit",
    "open_store",
    "read_metrics_file",
]


def __getattr__(name: str) -> object:
    # PostgresMetricsStore needs asyncpg (the `postgres` extra): import it only when asked.
    if name == "PostgresMetricsStore":
        from ._postgres import PostgresMetricsStore

        return PostgresMetricsStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
