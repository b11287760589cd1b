"""Telemetry for Crucible: an event bus, the standard event catalog, experiments that record
enriched events, queries, analysis and export.

Emit with ``execute(name, measurements, metadata)`` or ``with span(prefix, metadata):``;
consume with ``attach(handler_id, events, fn, config)``. A ``Telemetry`` hub records the
events addressed to its experiments. See docs/telemetry.md.
"""

from crucible.telemetry._analysis import (
    Comparison,
    CostMetrics,
    ExperimentMetrics,
    LatencyMetrics,
    ReliabilityMetrics,
    Summary,
    TokenMetrics,
    TreatmentComparison,
    calculate_metrics,
    compare_metrics,
)
from crucible.telemetry._bus import (
    HandlerFn,
    HandlerInfo,
    attach,
    attach_many,
    detach,
    execute,
    list_handlers,
    span,
)
from crucible.telemetry._catalog import EventInfo, event_info, events_by_category, standard_events
from crucible.telemetry._enrichment import DEFAULT_PRICES, ModelPrice, PriceTable, enrich
from crucible.telemetry._errors import (
    AlreadyPaused,
    DuplicateHandler,
    NoData,
    NotFound,
    NotPaused,
    NotRunning,
    TelemetryError,
    UnsupportedFormat,
)
from crucible.telemetry._event import (
    Experiment,
    ExperimentStatus,
    TelemetryEvent,
    current_experiment_id,
)
from crucible.telemetry._export import FORMATS, ExportFormat, read_jsonl, to_csv, to_jsonl
from crucible.telemetry._handlers import ConsoleHandler, JsonlHandler, format_step
from crucible.telemetry._hub import Telemetry
from crucible.telemetry._store import EventStore, Last, LastN, TimeRange, WindowSpec

__all__ = [
    "DEFAULT_PRICES",
    "FORMATS",
    "AlreadyPaused",
    "Comparison",
    "ConsoleHandler",
    "CostMetrics",
    "DuplicateHandler",
    "EventInfo",
    "EventStore",
    "Experiment",
    "ExperimentMetrics",
    "ExperimentStatus",
    "ExportFormat",
    "HandlerFn",
    "HandlerInfo",
    "JsonlHandler",
    "Last",
    "LastN",
    "LatencyMetrics",
    "ModelPrice",
    "NoData",
    "NotFound",
    "NotPaused",
    "NotRunning",
    "PriceTable",
    "ReliabilityMetrics",
    "Summary",
    "Telemetry",
    "TelemetryError",
    "TelemetryEvent",
    "TimeRange",
    "TokenMetrics",
    "TreatmentComparison",
    "UnsupportedFormat",
    "WindowSpec",
    "attach",
    "attach_many",
    "calculate_metrics",
    "compare_metrics",
    "current_experiment_id",
    "detach",
    "enrich",
    "event_info",
    "events_by_category",
    "execute",
    "format_step",
    "list_handlers",
    "read_jsonl",
    "span",
    "standard_events",
    "to_csv",
    "to_jsonl",
]
