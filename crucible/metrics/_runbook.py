"""Runs in memory: the memory store's `RunStore`, and the batch summaries every store keeps.

`summarize_batch` folds a batch of points into one (count, min, max, last) per run and
metric; the SQL stores upsert those rows, `RunBook` merges them into its dicts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import attrs

from ._record import MetricRecord
from ._runs import (
    DEFAULT_STALE_AFTER,
    UNSET,
    CheckpointRef,
    MetricStat,
    ModelVersionRef,
    RunNotFound,
    RunPage,
    RunQuery,
    RunRecord,
    RunSpec,
    RunUpdate,
    SortValue,
    check_query,
    check_spec,
    check_update,
    decode_cursor,
    effective_status,
    encode_cursor,
    stale_cutoff,
)

__all__ = ["BatchStat", "RunBook", "summarize_batch"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def last_key(record: MetricRecord) -> tuple[bool, int, datetime]:
    """Read order of a metric's points: a later key (or an equal one arriving later) is last."""
    step = record.step
    return (step is None, step if step is not None else 0, record.timestamp)


@attrs.define
class BatchStat:
    count: int
    min: float
    max: float
    last: MetricRecord
    first_ts: datetime


def summarize_batch(records: Iterable[MetricRecord]) -> dict[tuple[str, str], BatchStat]:
    stats: dict[tuple[str, str], BatchStat] = {}
    for record in records:
        key = (record.run_id, record.metric)
        stat = stats.get(key)
        value = record.value
        if stat is None:
            stats[key] = BatchStat(1, value, value, record, record.timestamp)
            continue
        stat.count += 1
        if value < stat.min:
            stat.min = value
        if value > stat.max:
            stat.max = value
        if last_key(record) >= last_key(stat.last):
            stat.last = record
        if record.timestamp < stat.first_ts:
            stat.first_ts = record.timestamp
    return stats


def run_starts(stats: dict[tuple[str, str], BatchStat]) -> dict[str, datetime]:
    """The earliest point time per run of a batch: the start of a run that points create."""
    starts: dict[str, datetime] = {}
    for (run_id, _), stat in stats.items():
        known = starts.get(run_id)
        starts[run_id] = stat.first_ts if known is None else min(known, stat.first_ts)
    return starts


def merge_checkpoints(
    current: list[CheckpointRef], added: list[CheckpointRef]
) -> list[CheckpointRef]:
    by_name = {c.name: c for c in current}
    for checkpoint in added:
        by_name[checkpoint.name] = checkpoint
    return list(by_name.values())


def merge_versions(
    current: list[ModelVersionRef], added: list[ModelVersionRef]
) -> list[ModelVersionRef]:
    by_key = {(v.name, v.version): v for v in current}
    for version in added:
        by_key[(version.name, version.version)] = version
    return list(by_key.values())


def new_run(spec: RunSpec, now: datetime) -> dict[str, Any]:
    """The stored fields of a run created from `spec` (status running)."""
    return {
        "id": spec.id,
        "name": spec.name or spec.id,
        "project": spec.project,
        "group": spec.group,
        "tags": spec.tags,
        "notes": spec.notes,
        "config": spec.config,
        "status": "running",
        "started_at": spec.started_at or now,
        "ended_at": None,
        "heartbeat_at": now,
        "host": spec.host,
        "git_commit": spec.git_commit,
        "summary": {},
        "checkpoints": [],
        "model_versions": [],
    }


def resumed(row: dict[str, Any], spec: RunSpec, now: datetime) -> dict[str, Any]:
    """`row` created again: the given fields are set, it runs again, its start is kept."""
    changed = dict(row)
    changed.update(
        name=spec.name or row["name"],
        status="running",
        ended_at=None,
        heartbeat_at=max(row["heartbeat_at"], now),
        tags=spec.tags or row["tags"],
        config=spec.config or row["config"],
        notes=spec.notes or row["notes"],
    )
    for field in ("project", "group", "host", "git_commit"):
        if getattr(spec, field) is not None:
            changed[field] = getattr(spec, field)
    if spec.started_at is not None:
        changed["started_at"] = spec.started_at
    return changed


def updated(row: dict[str, Any], update: RunUpdate, now: datetime) -> dict[str, Any]:
    changed = dict(row)
    if update.status is not UNSET:
        changed["status"] = update.status
        if update.status == "running":
            changed["ended_at"] = None
            changed["heartbeat_at"] = max(row["heartbeat_at"], now)
        elif update.ended_at is UNSET and row["ended_at"] is None:
            changed["ended_at"] = now
    if update.ended_at is not UNSET:
        changed["ended_at"] = update.ended_at
    if update.tags is not UNSET:
        changed["tags"] = update.tags
    if update.notes is not UNSET:
        changed["notes"] = update.notes
    if isinstance(update.summary, dict):
        changed["summary"] = {**row["summary"], **{k: float(v) for k, v in update.summary.items()}}
    if update.checkpoints:
        changed["checkpoints"] = merge_checkpoints(row["checkpoints"], update.checkpoints)
    if update.model_versions:
        changed["model_versions"] = merge_versions(row["model_versions"], update.model_versions)
    return changed


class RunBook:
    """Runs and their metric summaries in dicts, under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}
        self._stats: dict[str, dict[str, MetricStat]] = {}

    def observe(self, batch: list[MetricRecord], now: datetime | None = None) -> None:
        """Points were stored: create their runs if new, bump heartbeats, fold summaries."""
        now = now or datetime.now(UTC)
        stats = summarize_batch(batch)
        with self._lock:
            for run_id, start in run_starts(stats).items():
                row = self._rows.get(run_id)
                if row is None:
                    row = new_run(RunSpec(id=run_id, started_at=start), now)
                    self._rows[run_id] = row
                row["heartbeat_at"] = max(row["heartbeat_at"], now)
            for (run_id, metric), stat in stats.items():
                metrics = self._stats.setdefault(run_id, {})
                old = metrics.get(metric)
                last = stat.last
                if old is not None:
                    old_key = (old.last_step is None, old.last_step or 0, old.last_timestamp)
                    if last_key(last) < old_key:
                        last = MetricRecord(
                            run_id, metric, old.last, old.last_step, old.last_timestamp
                        )
                metrics[metric] = MetricStat(
                    count=stat.count + (old.count if old else 0),
                    min=min(stat.min, old.min) if old else stat.min,
                    max=max(stat.max, old.max) if old else stat.max,
                    last=last.value,
                    last_step=last.step,
                    last_timestamp=last.timestamp,
                )

    def forget(self, run_id: str) -> bool:
        with self._lock:
            self._stats.pop(run_id, None)
            return self._rows.pop(run_id, None) is not None

    def create(self, spec: RunSpec) -> tuple[RunRecord, bool]:
        spec = check_spec(spec)
        now = datetime.now(UTC)
        with self._lock:
            row = self._rows.get(spec.id)
            created = row is None
            row = new_run(spec, now) if row is None else resumed(row, spec, now)
            self._rows[spec.id] = row
            return self._record(row, stale_cutoff(now, DEFAULT_STALE_AFTER)), created

    def update(self, run_id: str, update: RunUpdate) -> RunRecord:
        update = check_update(update)
        now = datetime.now(UTC)
        with self._lock:
            row = self._rows.get(run_id)
            if row is None:
                raise RunNotFound(run_id)
            row = self._rows[run_id] = updated(row, update, now)
            return self._record(row, stale_cutoff(now, DEFAULT_STALE_AFTER))

    def heartbeat(self, run_id: str, at: datetime | None) -> None:
        with self._lock:
            row = self._rows.get(run_id)
            if row is None:
                raise RunNotFound(run_id)
            row["heartbeat_at"] = max(row["heartbeat_at"], at or datetime.now(UTC))

    def get(self, run_id: str, cutoff: datetime) -> RunRecord:
        with self._lock:
            row = self._rows.get(run_id)
            if row is None:
                raise RunNotFound(run_id)
            return self._record(row, cutoff)

    def _record(self, row: dict[str, Any], cutoff: datetime) -> RunRecord:
        return record_of(row, dict(sorted(self._stats.get(row["id"], {}).items())), cutoff)

    def list(self, query: RunQuery) -> RunPage:
        query = check_query(query)
        cutoff = query.stale_before()
        with self._lock:
            runs = [self._record(row, cutoff) for row in self._rows.values()]
        return page_of(runs, query)


# -- listing in Python (the SQL stores do the same in SQL) -----------------------------------


def _config_matches(config: dict[str, Any], path: tuple[str, ...], wanted: object) -> bool:
    value: Any = config
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return False
        value = value[key]
    if isinstance(wanted, bool) or isinstance(value, bool) or wanted is None or value is None:
        return type(value) is type(wanted) and value == wanted
    if isinstance(wanted, str) or isinstance(value, str):
        return type(value) is type(wanted) and value == wanted
    return isinstance(value, int | float) and value == wanted


def matches(run: RunRecord, query: RunQuery) -> bool:
    if query.status and run.status not in query.status:
        return False
    if any(tag not in run.tags for tag in query.tags):
        return False
    if query.project is not None and run.project != query.project:
        return False
    if query.group is not None and run.group != query.group:
        return False
    if not all(_config_matches(run.config, c.path, c.value) for c in query.config):
        return False
    for wanted in query.metrics:
        stat = run.metrics.get(wanted.metric)
        if stat is None:
            return False
        value = getattr(stat, wanted.aggregate)
        if wanted.low is not None and value < wanted.low:
            return False
        if wanted.high is not None and value > wanted.high:
            return False
    return True


def sort_value(run: RunRecord, query: RunQuery) -> SortValue:
    if query.sort == "started_at":
        return micros(run.started_at)
    if query.sort == "name":
        return run.name
    assert query.sort_metric is not None
    stat = run.metrics.get(query.sort_metric)
    value: SortValue = None if stat is None else getattr(stat, query.sort_aggregate)
    return value


def page_of(runs: list[RunRecord], query: RunQuery) -> RunPage:
    """Filter, sort (runs without the sort metric last), then the page after the cursor."""
    desc = query.desc
    keyed = [(sort_value(run, query), run.id, run) for run in runs if matches(run, query)]
    present = sorted((k for k in keyed if k[0] is not None), key=lambda k: (k[0], k[1]))
    absent = sorted((k for k in keyed if k[0] is None), key=lambda k: k[1])
    if desc:
        present.reverse()
        absent.reverse()
    ordered = present + absent
    if query.cursor is not None:
        value, run_id = decode_cursor(query)
        ordered = [k for k in ordered if _after(k[0], k[1], value, run_id, desc)]
    chosen = ordered[: query.limit]
    more = len(ordered) > query.limit
    cursor = encode_cursor(query, chosen[-1][0], chosen[-1][1]) if more else None
    return RunPage([k[2] for k in chosen], cursor)


def _after(value: Any, run_id: str, cursor_value: Any, cursor_id: str, desc: bool) -> bool:
    if cursor_value is None:
        return value is None and (run_id < cursor_id if desc else run_id > cursor_id)
    if value is None:
        return True
    if desc:
        return bool(value < cursor_value or (value == cursor_value and run_id < cursor_id))
    return bool(value > cursor_value or (value == cursor_value and run_id > cursor_id))


def record_of(row: dict[str, Any], metrics: dict[str, MetricStat], cutoff: datetime) -> RunRecord:
    status = effective_status(row["status"], row["heartbeat_at"], cutoff)
    return RunRecord(**{**row, "status": status, "metrics": metrics})
