"""Checkpoint files of the local backend: torch payloads with a format marker, sealed with
their sha256 (``_checksum``).

Files are written atomically (crucible._fs, whose temporary names ``remove_stale_temporaries``
clears after a kill), so a crash mid-save leaves the previous file or the new one, never a
torn one; and every read verifies the checksum before torch sees a byte, so a file damaged
later (flipped bytes, truncation) is reported as CheckpointCorrupt naming the file, never
loaded as different numbers.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from crucible._fs import write_bytes_atomically
from crucible.training.backends.local._checksum import read_sealed, seal
from crucible.training.backends.local._paths import CheckpointPath
from crucible.training.port import CheckpointCorrupt, CheckpointNotFound


def write_atomically(payload: dict[str, Any], destination: Path) -> None:
    """torch.save ``payload``, seal it with its checksum, and replace ``destination`` so
    readers see the old or the new file only."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomically(destination, seal(buffer.getvalue()))


def read_checkpoint(path: CheckpointPath, root: Path, expected_format: str) -> dict[str, Any]:
    """Verify, load and check the format marker; errors name the file and what is wrong."""
    file = path.file(root)
    what = f"checkpoint {path} ({file})"
    if not file.is_file():
        raise CheckpointNotFound(f"no checkpoint at {path} (expected the file {file})")
    data = read_sealed(file, what)
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as error:  # torch raises many types for a damaged zip or pickle
        raise CheckpointCorrupt(f"{what} cannot be read: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointCorrupt(f"{what} has format {found!r}, expected {expected_format!r}")
    return payload
