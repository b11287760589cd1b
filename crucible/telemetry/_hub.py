"""The Telemetry hub: experiments, routing of bus events to them, their stores and live feeds.

One hub attaches one bus handler for every event. An event is recorded by an experiment of this
hub only when it is addressed to it: ``metadata["experiment_id"]`` names it, or the event was
emitted inside ``with experiment.active():``. Experiments never see each other's events.

Threads: the bus runs handlers in the emitter's thread, so the hub guards its tables with a
lock; emitting from a trainer thread and querying from the event loop is safe. With an async
runtime, live metrics reach the experiment's StreamingMetrics actor through ``cast_nowait``,
which must run in the runtime's thread: emit from that thread (or use an embedded runtime).
"""

from __future__ import annotations

import builtins
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec

from crucible.actors import Runtime
from crucible.metrics import StreamingSnapshot
from crucible.stats import Window
from crucible.telemetry import _bus
from crucible.telemetry._analysis import (
    Comparison,
    ExperimentMetrics,
    calculate_metrics,
    compare_metrics,
)
from crucible.telemetry._enrichment import PriceTable, _number, enrich
from crucible.telemetry._errors import (
    AlreadyPaused,
    NoData,
    NotFound,
    NotPaused,
    NotRunning,
    UnsupportedFormat,
)
from crucible.telemetry._event import Experiment, TelemetryEvent, current_experiment_id
from crucible.telemetry._export import FORMATS, render, to_jsonl
from crucible.telemetry._feed import InProcessFeed, MetricsFeed, spawn_actor_feed
from crucible.telemetry._jsonsafe import struct_jsonable
from crucible.telemetry._store import EventStore, WindowSpec

__all__ = ["Telemetry"]


_encoder = msgspec.json.Encoder()


def _now_us() -> int:
    return time.time_ns() // 1000


class Telemetry:
    """Experiments and their recorded events.

    ``runtime``: an actor runtime (``crucible.actors.open_runtime()``); each experiment then
    feeds its own StreamingMetrics actor. Without one, live metrics are aggregated in-process
    by the same logic. ``prices`` sets the token price table, ``clock`` (µs since the epoch)
    and ``rng`` (for sampling) are injectable for tests.
    """

    def __init__(
        self,
        *,
        runtime: Runtime | None = None,
        prices: PriceTable | None = None,
        clock: Callable[[], int] = _now_us,
        rng: random.Random | None = None,
    ) -> None:
        self._runtime = runtime
        self._prices = prices or PriceTable()
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._experiments: dict[str, Experiment] = {}
        self._stores: dict[str, EventStore] = {}
        self._feeds: dict[str, MetricsFeed] = {}
        self.handler_id = f"crucible.telemetry.hub.{secrets.token_hex(6)}"
        _bus.attach(self.handler_id, "*", self._on_event)

    # -- lifecycle of the hub ------------------------------------------------------------

    async def aclose(self) -> None:
        """Detach from the bus and stop every live feed; recorded data stays readable."""
        _bus.detach(self.handler_id)
        with self._lock:
            feeds = list(self._feeds.values())
            self._feeds.clear()
        for feed in feeds:
            await feed.close()

    async def __aenter__(self) -> Telemetry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- experiments -----------------------------------------------------------------------

    async def start_experiment(
        self,
        name: str,
        hypothesis: str | None = None,
        condition: str = "default",
        tags: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> Experiment:
        """Start recording events addressed to a new experiment; returns it (status running)."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"an experiment needs a non-empty name, got {name!r}")
        if isinstance(tags, str):
            raise TypeError(f"tags is a collection of strings, got the string {tags!r}")
        experiment = Experiment(
            id=secrets.token_hex(8),
            name=name,
            hypothesis=hypothesis,
            condition=condition,
            tags=tuple(tags),
            metadata=dict(metadata or {}),
            started_at=self._clock(),
        )
        if self._runtime is None:
            feed: MetricsFeed = InProcessFeed()
        else:
            feed = await spawn_actor_feed(self._runtime, experiment)
        with self._lock:
            self._experiments[experiment.id] = experiment
            self._stores[experiment.id] = EventStore()
            self._feeds[experiment.id] = feed
        return experiment

    def _require(self, experiment_id: str) -> Experiment:
        experiment = self._experiments.get(experiment_id)
        if experiment is None:
            raise NotFound(experiment_id)
        return experiment

    def _replace(self, experiment: Experiment, **changes: Any) -> Experiment:
        updated = msgspec.structs.replace(experiment, **changes)
        self._experiments[experiment.id] = updated
        return updated

    def get(self, experiment_id: str) -> Experiment:
        """The experiment's current snapshot; NotFound if unknown."""
        with self._lock:
            return self._require(experiment_id)

    def list(self) -> builtins.list[Experiment]:
        """Every experiment of this hub, oldest first."""
        with self._lock:
            return sorted(self._experiments.values(), key=lambda e: e.started_at)

    def stop(self, experiment_id: str) -> Experiment:
        """Stop recording; the events and live metrics stay readable until ``cleanup``."""
        with self._lock:
            experiment = self._require(experiment_id)
            if experiment.status == "stopped":
                return experiment
            return self._replace(experiment, status="stopped", stopped_at=self._clock())

    def pause(self, experiment_id: str) -> Experiment:
        """Stop recording for a while (events emitted meanwhile are dropped)."""
        with self._lock:
            experiment = self._require(experiment_id)
            if experiment.status == "paused":
                raise AlreadyPaused(experiment_id, "paused", "resume() it instead")
            if experiment.status != "running":
                raise NotRunning(experiment_id, experiment.status, "only a running one pauses")
            return self._replace(
                experiment, status="paused", pause_count=experiment.pause_count + 1
            )

    def resume(self, experiment_id: str) -> Experiment:
        """Record again after ``pause``."""
        with self._lock:
            experiment = self._require(experiment_id)
            if experiment.status != "paused":
                raise NotPaused(experiment_id, experiment.status, "only a paused one resumes")
            return self._replace(experiment, status="running")

    def is_paused(self, experiment_id: str) -> bool:
        """True if the experiment is paused; False if it is not, or is unknown."""
        with self._lock:
            experiment = self._experiments.get(experiment_id)
        return experiment is not None and experiment.status == "paused"

    async def cleanup(self, experiment_id: str, keep_data: bool = False) -> None:
        """Stop the experiment and its live feed; forget it and its events unless
        ``keep_data`` (then it stays listed, stopped, with its events queryable)."""
        with self._lock:
            experiment = self._require(experiment_id)
            if experiment.status != "stopped":
                self._replace(experiment, status="stopped", stopped_at=self._clock())
            feed = self._feeds.pop(experiment_id, None)
            if not keep_data:
                del self._experiments[experiment_id]
                del self._stores[experiment_id]
        if feed is not None:
            await feed.close()

    async def archive(self, experiment_id: str, path: str | Path) -> Path:
        """Write the experiment to a JSONL file: a metadata line (``"type": "experiment"``),
        then one line per event (``read_jsonl`` reads the events back)."""
        with self._lock:
            experiment = self._require(experiment_id)
            events = self._stores[experiment_id].all()
        header = {"type": "experiment", **struct_jsonable(experiment)}
        data = _encoder.encode(header) + b"\n" + to_jsonl(events).encode()
        await anyio.Path(path).write_bytes(data)
        return Path(path)

    async def export(self, experiment_id: str, fmt: str, path: str | Path) -> Path:
        """Write the experiment's events as ``csv`` or ``jsonl``. Raises NotFound,
        UnsupportedFormat, or NoData when it has recorded nothing."""
        with self._lock:
            self._require(experiment_id)
            events = self._stores[experiment_id].all()
        if fmt not in FORMATS:
            raise UnsupportedFormat(fmt, FORMATS)
        if not events:
            raise NoData(experiment_id)
        await anyio.Path(path).write_text(render(events, fmt), newline="")
        return Path(path)

    # -- recorded data -------------------------------------------------------------------

    def events(self, experiment_id: str) -> builtins.list[TelemetryEvent]:
        """Every recorded event of the experiment, oldest first."""
        with self._lock:
            self._require(experiment_id)
            return self._stores[experiment_id].all()

    def query(
        self, experiment_id: str, filters: Mapping[str, Any] | None = None
    ) -> builtins.list[TelemetryEvent]:
        """The experiment's events passing every filter (see ``EventStore.query``)."""
        with self._lock:
            self._require(experiment_id)
            return self._stores[experiment_id].query(filters)

    def query_window(
        self,
        experiment_id: str,
        spec: WindowSpec,
        filters: Mapping[str, Any] | None = None,
    ) -> builtins.list[TelemetryEvent]:
        """The events of a window (``Last``, ``LastN``, ``TimeRange``), optionally filtered."""
        with self._lock:
            self._require(experiment_id)
            return self._stores[experiment_id].query_window(spec, filters)

    def windowed_metrics(
        self, experiment_id: str, win_us: int, step_us: int
    ) -> builtins.list[Window]:
        """Per-window aggregates of the experiment's events (see ``EventStore``)."""
        with self._lock:
            self._require(experiment_id)
            return self._stores[experiment_id].windowed_metrics(win_us, step_us)

    def calculate_metrics(self, experiment_id: str) -> ExperimentMetrics:
        """Summary, latency, cost, reliability, tokens and per-event counts of the experiment."""
        return calculate_metrics(self.events(experiment_id))

    def compare_experiments(self, experiment_ids: Sequence[str]) -> Comparison:
        """Compare experiments; the first id is the baseline. Needs at least 2 distinct ids."""
        ids = builtins.list(experiment_ids)
        if len(ids) < 2:
            raise ValueError(f"comparing needs at least 2 experiment ids, got {len(ids)}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"each experiment may appear once in a comparison, got {ids}")
        return compare_metrics({i: self.calculate_metrics(i) for i in ids})

    async def live_metrics(self, experiment_id: str) -> StreamingSnapshot:
        """The experiment's streaming metrics (latency, cost, reliability, event counts)."""
        with self._lock:
            self._require(experiment_id)
            feed = self._feeds.get(experiment_id)
        if feed is None:
            raise NotRunning(experiment_id, "cleaned up", "its live metrics are gone")
        return await feed.metrics()

    async def reset_live_metrics(self, experiment_id: str) -> None:
        """Zero the experiment's streaming metrics (recorded events are kept)."""
        with self._lock:
            self._require(experiment_id)
            feed = self._feeds.get(experiment_id)
        if feed is not None:
            await feed.reset()

    # -- the bus handler -------------------------------------------------------------------

    def _on_event(
        self,
        event_name: str,
        measurements: Mapping[str, Any],
        metadata: Mapping[str, Any],
        _config: Any,
    ) -> None:
        target = metadata.get("experiment_id")
        if not isinstance(target, str):
            target = current_experiment_id()
            if target is None:
                return
        with self._lock:
            experiment = self._experiments.get(target)
            if experiment is None or experiment.status != "running":
                return
            if not self._sampled(metadata, experiment):
                return
            event = enrich(
                event_name,
                measurements,
                metadata,
                experiment,
                timestamp_us=self._clock(),
                prices=self._prices,
            )
            self._stores[target].insert(event)
            feed = self._feeds.get(target)
        if feed is not None:
            feed.observe(event)

    def _sampled(self, metadata: Mapping[str, Any], experiment: Experiment) -> bool:
        rate = _number(metadata.get("sampling_rate", experiment.metadata.get("sampling_rate")))
        if rate is None or rate >= 1.0:
            return True
        return self._rng.random() < rate
