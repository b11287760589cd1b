"""Choosing the checkpoint a resumed run starts from, skipping damaged ones.

A resumed run loads the newest state checkpoint whose files verify. A damaged one (bytes
changed, truncated, missing) is reported with the reason and passed over, so the run goes on
from the previous good checkpoint instead of failing, or worse, loading different numbers.

The steps after the chosen checkpoint are trained again and saved again under the same names,
so ``prepare_resume`` also drops their lines from ``checkpoints.jsonl`` (the damaged ones with
them): the log keeps one line per name, and the re-saves are new checkpoints rather than
overwrites.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec

from crucible.training.checkpoints._log import (
    CHECKPOINTS_FILE,
    CheckpointRecord,
    read_log,
    repair_log,
    rewrite_log,
)
from crucible.training.checkpoints._retention import resume_order, resume_point
from crucible.training.port import CheckpointCorrupt, CheckpointNotFound

#: Checks the files of a checkpoint path; raises CheckpointCorrupt or CheckpointNotFound.
#: For the local backend: ``lambda path: CheckpointPath.parse(path).verify(root)``.
Verify = Callable[[str], None]


class DamagedCheckpoint(msgspec.Struct, frozen=True):
    """A state checkpoint that a resume passed over: its name, path and what is wrong."""

    name: str
    path: str
    reason: str


class ResumePoint(msgspec.Struct, frozen=True):
    """What ``prepare_resume`` found: the checkpoint to load (None: start from scratch), the
    damaged ones it passed over (newest first), and the checkpoints it dropped from the log
    because their steps will be trained again (newest first; includes the damaged ones)."""

    record: CheckpointRecord | None
    damaged: tuple[DamagedCheckpoint, ...] = ()
    dropped: tuple[CheckpointRecord, ...] = ()


def latest_state_checkpoint(run_dir: Path) -> CheckpointRecord | None:
    """The checkpoint a resumed run loads from ``run_dir``, its files unchecked: a final state
    checkpoint first, else the newest state checkpoint, else None."""
    return resume_point(read_log(run_dir / CHECKPOINTS_FILE))


def latest_verified_state_checkpoint(run_dir: Path, verify: Verify | None) -> ResumePoint:
    """The newest state checkpoint in ``run_dir`` whose state file passes ``verify`` (None:
    trust every file, as for a remote backend), and the damaged ones newer than it. Reads only;
    ``dropped`` is left empty."""
    damaged: list[DamagedCheckpoint] = []
    for record in resume_order(read_log(run_dir / CHECKPOINTS_FILE)):
        assert record.state_path is not None
        if verify is not None:
            try:
                verify(record.state_path)
            except (CheckpointCorrupt, CheckpointNotFound) as error:
                damaged.append(DamagedCheckpoint(record.name, record.state_path, str(error)))
                continue
        return ResumePoint(record, tuple(damaged))
    return ResumePoint(None, tuple(damaged))


def prepare_resume(run_dir: Path, verify: Verify | None) -> ResumePoint:
    """Choose the checkpoint a resumed run loads (``latest_verified_state_checkpoint``) and
    drop from ``checkpoints.jsonl`` every checkpoint after it and every damaged one, so the
    run's re-saves of those steps start fresh. Call it before a CheckpointManager opens the
    log. The dropped checkpoints' files stay on disk until their names are saved again."""
    log = run_dir / CHECKPOINTS_FILE
    repair_log(log)
    found = latest_verified_state_checkpoint(run_dir, verify)
    records = read_log(log)
    damaged = {d.name for d in found.damaged}
    last_step = found.record.batch if found.record is not None else -1
    keep = [r for r in records if r.name not in damaged and r.batch <= last_step]
    if len(keep) == len(records):
        return found
    kept = {r.name for r in keep}
    dropped = [r for r in records if r.name not in kept]
    rewrite_log(log, keep)
    newest_first = sorted(dropped, key=lambda r: r.batch, reverse=True)
    return ResumePoint(found.record, found.damaged, tuple(newest_first))
