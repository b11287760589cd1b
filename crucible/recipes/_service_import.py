"""Importing finished runs from their run directories into a store that keeps runs, the
metric service's (``python -m crucible.serve import RUN_DIR...``).

The run directory is the source of truth: after an import, the store's copy of the run has
the run record (config.json, summary.json), exactly the points of metrics.jsonl, the
checkpoints of checkpoints.jsonl and the model versions the run registered. Importing again
changes nothing: a run whose stored copy already matches is left alone (not even its
heartbeat moves); one whose points differ (a live copy that missed some, or had steps a
resume dropped) has its points replaced.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import attrs
import msgspec

from crucible.metrics import (
    MetricRecord,
    MetricsStore,
    ModelVersionRef,
    RunNotFound,
    RunRecord,
    RunSpec,
    RunStore,
    RunUpdate,
    read_metrics_file,
)
from crucible.recipes._run_dir import run_dir_files
from crucible.recipes._service_link import (
    checkpoint_ref,
    end_notes,
    model_version_ref,
    run_tags,
    service_status,
    summary_numbers,
)
from crucible.training.checkpoints import CHECKPOINTS_FILE, CheckpointRecord
from crucible.training.registry import ModelNotFound, RegistryStore

__all__ = ["ImportResult", "NotARunDir", "RunSnapshot", "import_run", "read_run_dir"]

_CHUNK = 10_000  # points per record_many


class NotARunDir(ValueError):
    """The directory holds no run (no config.json), or one that cannot be read."""


@attrs.frozen
class RunSnapshot:
    """What a run directory says about its run, in the service's terms."""

    spec: RunSpec
    end: RunUpdate
    records: list[MetricRecord]


@attrs.frozen
class ImportResult:
    run_id: str
    action: Literal["imported", "replaced", "updated", "unchanged"]
    points: int  # points written by this import


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise NotARunDir(f"{path}: cannot read it: {error}") from error
    if not isinstance(data, dict):
        raise NotARunDir(f"{path} does not hold a JSON object")
    return data


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def _checkpoints(run_dir: Path) -> list[CheckpointRecord]:
    """The checkpoints.jsonl index, one record per name (the last line wins), a torn last
    line skipped. (Parsed with the owner's ``CheckpointRecord.from_row``.)"""
    path = run_dir / CHECKPOINTS_FILE
    if not path.exists():
        return []
    found: dict[str, CheckpointRecord] = {}
    for line in path.read_bytes().splitlines():
        try:
            record = CheckpointRecord.from_row(json.loads(line))
        except (ValueError, KeyError, TypeError):
            continue
        found.pop(record.name, None)
        found[record.name] = record
    return list(found.values())


def _model_versions(
    config: dict[str, Any], run_dir: Path, run_id: str, model_id: object
) -> list[ModelVersionRef]:
    registry_file = config.get("registry_path") or run_dir.parent / "registry.sqlite"
    path = Path(registry_file)
    if not path.is_file():
        return []
    registry = RegistryStore(path)
    try:
        found = registry.find(tags=(f"run:{run_id}",))
        if isinstance(model_id, int) and all(record.id != model_id for record in found):
            with contextlib.suppress(ModelNotFound):
                found.append(registry.get(model_id))
    finally:
        registry.close()
    return [model_version_ref(record) for record in sorted(found, key=lambda r: r.id)]


def read_run_dir(run_dir: Path) -> RunSnapshot:
    """The run in ``run_dir``, as the service stores it. Raises NotARunDir."""
    files = run_dir_files(run_dir)
    if not files.config.is_file():
        raise NotARunDir(f"{run_dir}: no {files.config.name} there; is it a run directory?")
    config = _read_json(files.config)
    summary = _read_json(files.summary) if files.summary.is_file() else {}
    run_id = str(summary.get("run_id") or run_dir.name)
    records = []
    if files.metrics.is_file():
        records = [r for r in read_metrics_file(files.metrics) if r.run_id == run_id]
    started = min((r.timestamp for r in records), default=_mtime(files.config))
    status = str(summary.get("status", "killed"))
    error = summary.get("error")
    ended = (
        _mtime(files.summary)
        if files.summary.is_file()
        else max((r.timestamp for r in records), default=started)
    )
    spec = RunSpec(
        id=run_id,
        name=str(config.get("name") or run_id),
        tags=run_tags(str(config.get("backend", "local"))),
        config=config,
        started_at=started,
    )
    end = RunUpdate(
        status=service_status(status),
        ended_at=ended,
        notes=end_notes(status, error if isinstance(error, str) else None),
        summary=summary_numbers(summary),
        checkpoints=[checkpoint_ref(record) for record in _checkpoints(run_dir)],
        model_versions=_model_versions(config, run_dir, run_id, summary.get("model_id")),
    )
    return RunSnapshot(spec, end, records)


def _close(a: datetime | None, b: datetime | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) < timedelta(milliseconds=1)


def _strip(refs: list[Any]) -> list[dict[str, Any]]:
    rows = [msgspec.to_builtins(ref) for ref in refs]
    for row in rows:
        row.pop("created_at", None)
    return sorted(rows, key=lambda row: json.dumps(row, sort_keys=True))


def _same_numbers(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-12) for k in a)


def _matches(stored: RunRecord, snap: RunSnapshot) -> bool:
    """Whether the stored run already says what the directory says (its points aside)."""
    spec, end = snap.spec, snap.end
    return (
        stored.name == spec.name
        and stored.tags == spec.tags
        and stored.config == spec.config
        and stored.status == end.status
        and stored.notes == end.notes
        and _close(stored.ended_at, end.ended_at if isinstance(end.ended_at, datetime) else None)
        and isinstance(end.summary, dict)
        and _same_numbers(stored.summary, end.summary)
        and _strip(stored.checkpoints) == _strip(end.checkpoints)
        and _strip(stored.model_versions) == _strip(end.model_versions)
    )


def _counts(records: list[MetricRecord]) -> Counter[str]:
    return Counter(record.metric for record in records)


async def import_run(store: MetricsStore, run_dir: Path) -> ImportResult:
    """Make ``store``'s copy of the run in ``run_dir`` what the directory says."""
    if not isinstance(store, RunStore):
        raise TypeError(f"{type(store).__name__} keeps no run records (use SQLite or PostgreSQL)")
    snap = read_run_dir(run_dir)
    run_id = snap.spec.id
    try:
        stored: RunRecord | None = await store.get_run(run_id)
    except RunNotFound:
        stored = None
    same_points = stored is not None and _counts(snap.records) == Counter(
        {name: stat.count for name, stat in stored.metrics.items()}
    )
    if stored is not None and same_points and _matches(stored, snap):
        return ImportResult(run_id, "unchanged", 0)
    action: Literal["imported", "replaced", "updated"] = "updated"
    if stored is not None and not same_points:
        await store.delete_run(run_id)  # its points differ: the directory's replace them
        stored, action = None, "replaced"
    elif stored is None:
        action = "imported"
    written = 0
    if stored is None:
        await store.create_run(snap.spec)
        for start in range(0, len(snap.records), _CHUNK):
            await store.record_many(snap.records[start : start + _CHUNK])
            written += len(snap.records[start : start + _CHUNK])
        await store.flush()
    else:  # make the stored record say what the directory says; its start time is kept
        await store.create_run(msgspec.structs.replace(snap.spec, started_at=None))
    await store.update_run(run_id, snap.end)
    return ImportResult(run_id, action, written)
