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
from typing import IO, Any, BinaryIO, cast

import torch

from crucible._fs import replace_atomically
from crucible.training.backends.local._checksum import SealingWriter, read_sealed
from crucible.training.backends.local._paths import CheckpointPath
from crucible.training.port import CheckpointCorrupt, CheckpointNotFound


class _ReadOnlyView(io.RawIOBase):
    """A seekable binary file over a memoryview (io.BytesIO would copy a view's bytes)."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._view[self._at : self._at + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._at += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at


def write_atomically(payload: dict[str, Any], destination: Path) -> None:
    """torch.save ``payload``, seal it with its checksum, and replace ``destination`` so
    readers see the old or the new file only."""

    def write(handle: BinaryIO) -> None:
        sealing = SealingWriter(handle)
        torch.save(payload, sealing)  # type: ignore[arg-type]  # a writable binary file
        sealing.seal()

    replace_atomically(destination, write)


def read_checkpoint(path: CheckpointPath, root: Path, expected_format: str) -> dict[str, Any]:
    """Verify, load and check the format marker; errors name the file and what is wrong."""
    file = path.file(root)
    what = f"checkpoint {path} ({file})"
    if not file.is_file():
        raise CheckpointNotFound(f"no checkpoint at {path} (expected the file {file})")
    data = read_sealed(file, what)
    try:
        # torch reads the verified bytes only, as a file object over the same memory
        payload = torch.load(cast(IO[bytes], _ReadOnlyView(data)), weights_only=True)
    except Exception as error:  # torch raises many types for a damaged zip or pickle
        raise CheckpointCorrupt(f"{what} cannot be read: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointCorrupt(f"{what} has format {found!r}, expected {expected_format!r}")
    return payload
