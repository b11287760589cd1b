"""Checkpoint files of the local backend: torch payloads with a format marker.

Files are written atomically (crucible._fs), so a crash mid-save leaves the previous file or
the new one, never a torn one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from crucible._fs import replace_atomically
from crucible.training.backends.local._paths import CheckpointPath
from crucible.training.port import CheckpointCorrupt, CheckpointNotFound


def write_atomically(payload: dict[str, Any], destination: Path) -> None:
    """torch.save ``payload`` so readers see the old or the new file only."""
    replace_atomically(destination, lambda handle: torch.save(payload, handle))


def read_checkpoint(path: CheckpointPath, root: Path, expected_format: str) -> dict[str, Any]:
    """Load and check the format marker; errors name the file and what is wrong."""
    file = path.file(root)
    if not file.is_file():
        raise CheckpointNotFound(f"no checkpoint at {path} (expected the file {file})")
    try:
        with file.open("rb") as handle:
            payload = torch.load(handle, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged zip or pickle
        raise CheckpointCorrupt(f"checkpoint {path} ({file}) cannot be read: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointCorrupt(
            f"checkpoint {path} ({file}) has format {found!r}, expected {expected_format!r}"
        )
    return payload
