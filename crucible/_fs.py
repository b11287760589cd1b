"""Durable files: atomic replacement, fsync of a directory, repair of a torn last line.

Every file format crucible owns (metrics.jsonl, checkpoints.jsonl, checkpoints, run files,
the Tinker server's records) is written through these few functions, so the crash guarantees
are stated and tested once:

- ``replace_atomically`` and its byte/JSON forms: a reader, or a restart after a crash, sees
  the old file or the new one, never a mix. Temporary files are named ``.<name>.<random>.tmp``
  beside the target, so ``remove_stale_temporaries`` can clear what a kill left behind.
- ``repair_torn_tail``: an append-only line file whose writer was killed mid-line ends in a
  line without its newline; that line is either complete (keep it, add the newline) or torn
  (cut it).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Final

TEMPORARY_SUFFIX: Final = ".tmp"
_BLOCK: Final = 65536


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` survive a power loss."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def replace_atomically(destination: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through ``write`` into a temporary file beside ``destination``, fsync it, rename it
    over ``destination`` and fsync the directory.

    On any error (or cancellation by a signal) the temporary file is removed and
    ``destination`` is untouched.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=TEMPORARY_SUFFIX
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_directory(destination.parent)


def write_bytes_atomically(destination: Path, data: bytes) -> None:
    replace_atomically(destination, lambda handle: handle.write(data))


def write_json_atomically(destination: Path, data: Any) -> None:
    """Replace ``destination`` with ``data`` as indented JSON (NaN refused: not JSON)."""
    payload = (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()
    write_bytes_atomically(destination, payload)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files that a killed ``replace_atomically`` left in ``directory``
    (recursively); return them. Call it only when no writer is active there."""
    if not directory.is_dir():
        return []
    stale = [
        path
        for path in directory.rglob(f".*{TEMPORARY_SUFFIX}")
        if path.is_file() and not path.is_symlink()
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def last_line_start(fd: int, size: int) -> int:
    """The offset where the last line of the first ``size`` bytes of ``fd`` starts."""
    end = size
    while end > 0:
        start = max(0, end - _BLOCK)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def repair_torn_tail(fd: int, is_complete: Callable[[bytes], bool]) -> int:
    """Repair a line file open for writing at ``fd``; return its size afterwards.

    A file that is empty or ends with a newline is left alone. Otherwise its last line was
    being appended when the writer died: if ``is_complete(line)`` it only lacks its newline,
    which is added; else it is cut off. The change is fsynced.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    start = last_line_start(fd, size)
    if is_complete(os.pread(fd, size - start, start)):
        os.pwrite(fd, b"\n", size)
        size += 1
    else:
        os.ftruncate(fd, start)
        size = start
    os.fsync(fd)
    return size


def repair_torn_tail_at(path: Path, is_complete: Callable[[bytes], bool]) -> int:
    """``repair_torn_tail`` on the file at ``path``; a missing file has size 0."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        return repair_torn_tail(fd, is_complete)
    finally:
        os.close(fd)
