"""The enriched event record and the experiment record (both cross boundaries: JSONL, CSV)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

import msgspec

__all__ = ["Experiment", "ExperimentStatus", "TelemetryEvent", "current_experiment_id"]

ExperimentStatus = Literal["running", "paused", "stopped"]

# The experiment that events emitted in this context are addressed to (set by
# Experiment.active()). A ContextVar, so it follows tasks and never leaks between them.
_active_experiment: ContextVar[str | None] = ContextVar("crucible_active_experiment", default=None)


def current_experiment_id() -> str | None:
    """The id set by the innermost ``with experiment.active():`` around this code, if any."""
    return _active_experiment.get()


class Experiment(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one experiment. The Telemetry hub owns the live record; calls that
    change it (stop, pause, resume) return a new snapshot."""

    id: str
    name: str
    hypothesis: str | None = None
    condition: str = "default"
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    status: ExperimentStatus = "running"
    started_at: int  # µs since the epoch, UTC
    stopped_at: int | None = None
    pause_count: int = 0

    @contextmanager
    def active(self) -> Iterator[Experiment]:
        """Address every event emitted inside the block (in this task) to this experiment."""
        token = _active_experiment.set(self.id)
        try:
            yield self
        finally:
            _active_experiment.reset(token)


class TelemetryEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded event: the emitted name, measurements and metadata, plus the experiment
    context and the fields computed by enrichment. ``timestamp`` is µs since the epoch, UTC."""

    event_id: str
    event_name: str
    timestamp: int
    experiment_id: str
    experiment_name: str
    condition: str
    tags: tuple[str, ...] = ()
    measurements: dict[str, Any] = msgspec.field(default_factory=dict)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    latency_ms: float | None = None
    cost_usd: float | None = None
    success: bool | None = None
    session_id: Any = None
    user_id: Any = None
    sample_id: Any = None
    cohort: Any = None
    model: Any = None
    provider: Any = None
    epoch: int | None = None
    batch: int | None = None
    loss: float | None = None
    accuracy: float | None = None
    learning_rate: float | None = None
    gradient_norm: float | None = None
    checkpoint_path: str | None = None


#: The names of TelemetryEvent's fields, for queries that match "a field or metadata".
EVENT_FIELDS: frozenset[str] = frozenset(TelemetryEvent.__struct_fields__)
