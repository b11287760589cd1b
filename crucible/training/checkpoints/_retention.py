"""Which checkpoints a run keeps: ordering, ranking, and the plans of prune and rotation.

Pure functions over the records (no I/O), so the rules are stated once and tested directly.
The rule both plans obey: the latest checkpoint, the resume point (the checkpoint a resumed
run would load) and the best checkpoint by each metric that matters are never removed; a
checkpoint without the metric is not judged by it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from crucible.training.checkpoints._log import CheckpointRecord

Mode = Literal["min", "max"]
#: A metric and whether lower or higher is better.
BestBy = tuple[str, Mode]


def newest_first(records: Sequence[CheckpointRecord]) -> list[CheckpointRecord]:
    """By step, newest first; the later log line is the newer among equal steps."""
    order = {record.name: index for index, record in enumerate(records)}
    return sorted(records, key=lambda r: (r.batch, order[r.name]), reverse=True)


def resume_order(records: Sequence[CheckpointRecord]) -> list[CheckpointRecord]:
    """State checkpoints in the order a resume prefers them: a final one first, then the
    newest step (the later log line among equals)."""
    order = {record.name: index for index, record in enumerate(records)}
    with_state = [r for r in records if r.state_path is not None]
    return sorted(with_state, key=lambda r: (r.final, r.batch, order[r.name]), reverse=True)


def resume_point(records: Sequence[CheckpointRecord]) -> CheckpointRecord | None:
    """The checkpoint a resumed run loads (before any file is verified), or None."""
    ordered = resume_order(records)
    return ordered[0] if ordered else None


def check_mode(mode: str) -> Mode:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return "min" if mode == "min" else "max"


def ranked(records: Sequence[CheckpointRecord], metric: str, mode: Mode) -> list[CheckpointRecord]:
    """Checkpoints that have ``metric``, best first (newer first among equals)."""
    sign = 1.0 if check_mode(mode) == "min" else -1.0
    having = [r for r in newest_first(records) if metric in r.metrics]
    return sorted(having, key=lambda r: sign * r.metrics[metric])  # stable: newer first


def protected(records: Sequence[CheckpointRecord], best_by: Iterable[BestBy]) -> set[str]:
    """Names that neither prune nor rotation may remove: the latest checkpoint, the resume
    point, and the best by each of ``best_by`` (when some checkpoint has that metric)."""
    names: set[str] = set()
    if records:
        names.add(newest_first(records)[0].name)
    point = resume_point(records)
    if point is not None:
        names.add(point.name)
    for metric, mode in best_by:
        best = ranked(records, metric, mode)
        if best:
            names.add(best[0].name)
    return names


def prune_plan(
    records: Sequence[CheckpointRecord],
    keep: int,
    metric: str,
    mode: Mode,
    also_best_by: Iterable[BestBy] = (),
) -> list[CheckpointRecord]:
    """What ``prune(keep, metric, mode)`` removes: the checkpoints that have ``metric`` beyond
    the ``keep`` best, except the protected ones (so the best survives even ``keep=0``)."""
    if isinstance(keep, bool) or keep < 0:
        raise ValueError(f"keep must be an integer >= 0, got {keep!r}")
    best_first = ranked(records, metric, mode)
    safe = protected(records, [(metric, mode), *also_best_by])
    safe.update(r.name for r in best_first[:keep])
    return [r for r in best_first if r.name not in safe]


def rotation_plan(
    records: Sequence[CheckpointRecord], limit: int, best_by: Iterable[BestBy] = ()
) -> list[CheckpointRecord]:
    """What rotation removes to bring the count down to ``limit``: the oldest unprotected
    checkpoints (fewer if too many are protected)."""
    excess = len(records) - limit
    if excess <= 0:
        return []
    safe = protected(records, best_by)
    removable = [r for r in reversed(newest_first(records)) if r.name not in safe]
    return removable[:excess]
