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
from pathlib import Path
from typing import Any

import attrs

from crucible._fs import repair_torn_tail_at, write_json_atomically

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
TELEMETRY_NAME = "telemetry.jsonl"
SUMMARY_NAME = "summary.json"


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


@attrs.frozen
class RunFiles:
    """The paths of a run directory, and the operations a run does on them."""

    run_dir: Path
    config: Path
    metrics: Path
    telemetry: Path
    summary: Path

    def used(self) -> bool:
        """Whether the directory already holds a run (anything but an empty directory)."""
        return self.run_dir.exists() and any(self.run_dir.iterdir())

    def read_config(self) -> dict[str, Any]:
        data = json.loads(self.config.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{self.config} does not hold a JSON object")
        return data

    def write_config(self, data: dict[str, Any]) -> None:
        write_json_atomically(self.config, data)

    def write_summary(self, data: dict[str, Any]) -> None:
        write_json_atomically(self.summary, data)

    def repair_tails(self) -> None:
        """Repair a line torn by a kill in the files the run appends to outside a store."""
        repair_torn_tail_at(self.telemetry, _is_json_object)


def run_dir_files(run_dir: Path | str) -> RunFiles:
    folder = Path(run_dir)
    names = (CONFIG_NAME, METRICS_NAME, TELEMETRY_NAME, SUMMARY_NAME)
    return RunFiles(folder, *(folder / name for name in names))
