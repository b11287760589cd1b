"""The run directory: what a run leaves on disk, and how a resumed run picks it up again.

    config.json        the resolved config (a resumed run starts from it)
    metrics.jsonl      MetricsStore JSONL: one record per metric per step
    checkpoints.jsonl  the CheckpointManager's index (tinker-cookbook format)
    telemetry.jsonl    every telemetry event
    checkpoints/       the backend's checkpoint files
    loss.png           train and eval loss against step, lr on a second axis
    summary.json       a short summary of the outcome

Resuming from the checkpoint at step s drops the metric records after s, so each
(metric, step) appears exactly once when the run has finished.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import msgspec

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINTS_NAME = "checkpoints.jsonl"
TELEMETRY_NAME = "telemetry.jsonl"
SUMMARY_NAME = "summary.json"
PLOT_NAME = "loss.png"


class _StepOnly(msgspec.Struct):
    metric: str
    step: int | None = None


_step_decoder = msgspec.json.Decoder(_StepOnly)


def write_json_atomically(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as indented JSON: a reader sees the old or the new file."""
    payload = (json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n").encode()
    _replace(path, [payload])


def _replace(path: Path, chunks: Iterable[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@attrs.frozen
class Truncation:
    kept: int
    dropped: int
    at_step: frozenset[tuple[str, int]]  # (metric, step) pairs kept at the resume step


def truncate_metrics_after(path: Path, step: int) -> Truncation:
    """Drop the records of ``path`` whose step is after ``step`` (and a torn last line).

    Lines that are not records are kept verbatim (the store reports them; nothing here
    rewrites data it does not understand). The file is replaced atomically.
    """
    if not path.exists():
        return Truncation(0, 0, frozenset())
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline; else an unfinished line
    kept: list[bytes] = []
    dropped = 1 if torn.strip() else 0
    at_step: set[tuple[str, int]] = set()
    for line in lines:
        try:
            record = _step_decoder.decode(line)
        except (msgspec.ValidationError, msgspec.DecodeError):
            kept.append(line)
            continue
        if record.step is not None and record.step > step:
            dropped += 1
            continue
        if record.step == step:
            at_step.add((record.metric, step))
        kept.append(line)
    if dropped:
        _replace(path, [b"".join(line + b"\n" for line in kept)])
    return Truncation(len(kept), dropped, frozenset(at_step))


def repair_jsonl_tail(path: Path) -> bool:
    """Cut an unfinished last line (a kill in the middle of an append); True if one was cut."""
    if not path.exists():
        return False
    size = path.stat().st_size
    if size == 0:
        return False
    with path.open("rb+") as handle:
        handle.seek(max(0, size - 65536))
        tail = handle.read()
        if tail.endswith(b"\n"):
            return False
        cut = tail.rfind(b"\n")
        new_size = size - len(tail) + cut + 1 if cut >= 0 else 0
        if cut < 0 and size > len(tail):
            return False  # one enormous line: leave it for a human
        handle.truncate(new_size)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def is_used(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds a run (anything but an empty directory)."""
    return run_dir.exists() and any(run_dir.iterdir())


def read_config(run_dir: Path) -> dict[str, Any]:
    data = json.loads((run_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{run_dir / CONFIG_NAME} does not hold a JSON object")
    return data


@attrs.frozen
class RunFiles:
    """The paths of a run directory, and the operations a run does on them."""

    run_dir: Path

    @property
    def config(self) -> Path:
        return self.run_dir / CONFIG_NAME

    @property
    def metrics(self) -> Path:
        return self.run_dir / METRICS_NAME

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / CHECKPOINTS_NAME

    @property
    def telemetry(self) -> Path:
        return self.run_dir / TELEMETRY_NAME

    @property
    def summary(self) -> Path:
        return self.run_dir / SUMMARY_NAME

    @property
    def plot(self) -> Path:
        return self.run_dir / PLOT_NAME

    def used(self) -> bool:
        return is_used(self.run_dir)

    def read_config(self) -> dict[str, Any]:
        return read_config(self.run_dir)

    def write_config(self, data: dict[str, Any]) -> None:
        write_json_atomically(self.config, data)

    def write_summary(self, data: dict[str, Any]) -> None:
        write_json_atomically(self.summary, data)

    def repair_tails(self) -> None:
        """Cut lines torn by a kill off the files this module appends to itself."""
        repair_jsonl_tail(self.telemetry)

    def truncate_metrics(self, step: int) -> frozenset[tuple[str, int]]:
        """Drop metric records after ``step``; the (metric, step) pairs kept at ``step``."""
        return truncate_metrics_after(self.metrics, step).at_step


def run_dir_files(run_dir: Path | str) -> RunFiles:
    return RunFiles(Path(run_dir))
