"""``checkpoints.jsonl``: the checkpoint index of a run, in the tinker-cookbook format.

One JSON object a line: ``name``, ``epoch``, ``batch`` (the step), ``state_path`` and/or
``sampler_path``, ``final``, plus the checkpoint's metrics as further numeric keys (the
cookbook spreads its loop state the same way), so either tool can resume the other's run.

Appends are durable (write, flush, fsync) and a line is only written after the checkpoint's
files are; a rewrite (after pruning) goes to a temporary file that replaces the old one
atomically. A torn last line, from a kill in the middle of an append, is ignored on read and
cut off when the log is next opened for writing; a later line for the same name replaces an
earlier one (a retried save).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import msgspec

from crucible.training._durable import replace_atomically

LOG_NAME: Final = "checkpoints.jsonl"
_RESERVED: Final = frozenset({"name", "epoch", "batch", "state_path", "sampler_path", "final"})


class CheckpointRecord(msgspec.Struct, frozen=True):
    """One checkpoint: its name, step (``batch``), paths, and the metrics it was saved with."""

    name: str
    batch: int
    epoch: int | None = None
    state_path: str | None = None
    sampler_path: str | None = None
    final: bool = False
    metrics: dict[str, float] = msgspec.field(default_factory=dict)

    def to_line(self) -> str:
        row: dict[str, Any] = {"name": self.name}
        if self.epoch is not None:
            row["epoch"] = self.epoch
        row["batch"] = self.batch
        if self.state_path is not None:
            row["state_path"] = self.state_path
        if self.sampler_path is not None:
            row["sampler_path"] = self.sampler_path
        row["final"] = self.final
        row.update(self.metrics)
        return json.dumps(row, allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CheckpointRecord:
        metrics = {
            key: float(value)
            for key, value in row.items()
            if key not in _RESERVED
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        }
        return cls(
            name=str(row["name"]),
            batch=int(row.get("batch", 0)),
            epoch=None if row.get("epoch") is None else int(row["epoch"]),
            state_path=row.get("state_path"),
            sampler_path=row.get("sampler_path"),
            final=bool(row.get("final", False)),
            metrics=metrics,
        )


def check_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Metric names must not shadow the record's own keys, and values must be finite."""
    clashes = sorted(_RESERVED & metrics.keys())
    if clashes:
        raise ValueError(f"metric names {clashes} are reserved by checkpoints.jsonl")
    bad = sorted(key for key, value in metrics.items() if not math.isfinite(float(value)))
    if bad:
        raise ValueError(f"metrics {bad} are not finite numbers")
    return {key: float(value) for key, value in metrics.items()}


def read_log(path: Path) -> tuple[list[CheckpointRecord], int]:
    """Records in log order (last line per name wins) and the byte length of the intact part.

    A line that does not parse is tolerated only at the end (a torn append); anywhere else
    it means the file was damaged by something else: CheckpointCorrupt.
    """
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    records: dict[str, CheckpointRecord] = {}
    intact = 0
    lines = data.split(b"\n")
    for index, line in enumerate(lines):
        is_last = index == len(lines) - 1
        if not line.strip():
            if not is_last:
                intact += len(line) + 1
            continue
        try:
            row = json.loads(line)
            record = CheckpointRecord.from_row(row)
        except (ValueError, KeyError, TypeError) as error:
            if is_last:  # a torn final append: no newline was written after it
                break
            raise ValueError(
                f"{path}: line {index + 1} is not a checkpoint record: {error}"
            ) from error
        if is_last:  # complete JSON but no trailing newline: keep it, the writer adds one
            intact += len(line)
        else:
            intact += len(line) + 1
        records.pop(record.name, None)
        records[record.name] = record
    return list(records.values()), intact


def repair_log(path: Path, intact: int) -> None:
    """Cut a torn tail off and make sure the file ends with a newline."""
    if not path.exists():
        return
    with path.open("r+b") as handle:
        handle.truncate(intact)
        if intact:
            handle.seek(intact - 1)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def append_record(path: Path, record: CheckpointRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(record.to_line() + "\n")  # one write: a kill leaves all or a torn tail
        handle.flush()
        os.fsync(handle.fileno())


def rewrite_log(path: Path, records: Iterable[CheckpointRecord]) -> None:
    lines = "".join(record.to_line() + "\n" for record in records).encode()
    replace_atomically(path, lambda handle: handle.write(lines))
