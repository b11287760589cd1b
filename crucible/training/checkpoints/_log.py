"""``checkpoints.jsonl``: the checkpoint index of a run, in the tinker-cookbook format.

One JSON object a line: ``name``, ``epoch``, ``batch`` (the step), ``state_path`` and/or
``sampler_path``, ``final``, plus the checkpoint's metrics as further numeric keys (the
cookbook spreads its loop state the same way), so either tool can resume the other's run.

Appends are durable (write, flush, fsync) and a line is only written after the checkpoint's
files are; a rewrite (after pruning) goes to a temporary file that replaces the old one
atomically. A torn last line, from a kill in the middle of an append, is ignored on read and
cut off when the log is next opened for writing. A name has one line: a replaced checkpoint
is rewritten in place. (A later line for the same name, from logs written before that rule,
replaces the earlier one on read, and ``open_log`` compacts such a log.)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import msgspec

from crucible._fs import repair_torn_tail_at, write_bytes_atomically

#: The checkpoint index's file name inside a run directory.
CHECKPOINTS_FILE: Final = "checkpoints.jsonl"
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


def _parse(line: bytes) -> CheckpointRecord:
    return CheckpointRecord.from_row(json.loads(line))


def _is_record(line: bytes) -> bool:
    try:
        _parse(line)
    except (ValueError, KeyError, TypeError):
        return False
    return True


def read_log(path: Path) -> list[CheckpointRecord]:
    """Records in log order (the last line for a name wins, at its place).

    A line that does not parse is tolerated only at the end (a torn append); anywhere else
    it means the file was damaged by something else: ValueError.
    """
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records: dict[str, CheckpointRecord] = {}
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = _parse(line)
        except (ValueError, KeyError, TypeError) as error:
            if index == len(lines) - 1:  # a torn final append: no newline was written after it
                break
            raise ValueError(
                f"{path}: line {index + 1} is not a checkpoint record: {error}"
            ) from error
        records.pop(record.name, None)
        records[record.name] = record
    return list(records.values())


def repair_log(path: Path) -> None:
    """Cut a torn last line off, or end a complete one with its newline."""
    repair_torn_tail_at(path, _is_record)


def open_log(path: Path) -> list[CheckpointRecord]:
    """Repair the log for writing and read it; a log in which a name repeats (older versions
    appended a line per save of a name) is rewritten with one line per name."""
    repair_log(path)
    records = read_log(path)
    if path.exists() and sum(1 for line in path.read_bytes().split(b"\n") if line.strip()) > len(
        records
    ):
        rewrite_log(path, records)
    return records


def append_record(path: Path, record: CheckpointRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(record.to_line() + "\n")  # one write: a kill leaves all or a torn tail
        handle.flush()
        os.fsync(handle.fileno())


def rewrite_log(path: Path, records: Iterable[CheckpointRecord]) -> None:
    write_bytes_atomically(path, "".join(record.to_line() + "\n" for record in records).encode())
