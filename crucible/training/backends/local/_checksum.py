"""Sealed checkpoint files: the payload, then a fixed-size trailer with its size and sha256.

A checkpoint file of the local backend is ``<torch.save bytes><trailer>``, the trailer being
``\\ncrucible-sha256:<64 hex digits>:<20-digit size>\\n`` (103 bytes). The checksum travels
inside the file it covers, so a copy, a move or a delete of the file keeps them together, and
one atomic rename publishes both. torch's zip reader ignores bytes after the archive, so the
file still opens with a plain ``torch.load`` (a debugging convenience; crucible itself always
verifies first and hands torch only the verified bytes).

Why not rely on torch: its zip reader does not check the CRC of the tensor records, so bytes
flipped inside a tensor load silently as different numbers. A truncated file loses its trailer
and is reported as such.

No torch here: ``CheckpointPath.verify`` uses this module to check a file without loading it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import BinaryIO, Final

from crucible.training.port import CheckpointCorrupt, CheckpointNotFound

_MAGIC: Final = b"\ncrucible-sha256:"
_TRAILER: Final = re.compile(rb"\ncrucible-sha256:([0-9a-f]{64}):([0-9]{20})\n\Z")
TRAILER_SIZE: Final = len(_MAGIC) + 64 + 1 + 20 + 1
_BLOCK: Final = 1 << 20


def _trailer_bytes(digest: str, size: int) -> bytes:
    return _MAGIC + f"{digest}:{size:020d}\n".encode()


class SealingWriter:
    """Passes writes through to ``handle``, hashing and counting them on the way, so a large
    payload is sealed as it streams out (no copy of it in memory); ``seal()`` then writes the
    trailer. Hand it to ``torch.save`` as the file."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self._size += view.nbytes
        return self._handle.write(view)

    def flush(self) -> None:
        self._handle.flush()

    def seal(self) -> None:
        self._handle.write(_trailer_bytes(self._hash.hexdigest(), self._size))


def _trailer(tail: bytes, size: int, what: str) -> tuple[str, int]:
    """Parse the trailer ``tail`` of a file of ``size`` bytes: (sha256 hex, payload size)."""
    found = _TRAILER.match(tail) if len(tail) == TRAILER_SIZE else None
    if found is None:
        raise CheckpointCorrupt(
            f"{what} cannot be read: it does not end with its checksum record (the file is "
            "truncated or damaged, or was not written by crucible)"
        )
    expected_size = int(found.group(2))
    if expected_size != size - TRAILER_SIZE:
        raise CheckpointCorrupt(
            f"{what} cannot be read: its checksum record covers {expected_size} bytes but "
            f"{size - TRAILER_SIZE} precede it (the file is truncated or damaged)"
        )
    return found.group(1).decode(), expected_size


def _mismatch(what: str, expected: str, actual: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(
        f"{what} cannot be read: its bytes do not match their sha256 (expected "
        f"{expected[:16]}…, found {actual[:16]}…): the file is damaged"
    )


def unseal(raw: bytes, what: str) -> memoryview:
    """The payload of the sealed file contents ``raw``, verified (a view: no copy); ``what``
    names the file in the CheckpointCorrupt that a damaged or truncated file raises."""
    digest, size = _trailer(raw[-TRAILER_SIZE:], len(raw), what)
    payload = memoryview(raw)[:size]
    actual = hashlib.sha256(payload).hexdigest()
    if actual != digest:
        raise _mismatch(what, digest, actual)
    return payload


def read_sealed(file: Path, what: str) -> memoryview:
    """Read ``file`` and return its verified payload (CheckpointNotFound if it is missing)."""
    try:
        raw = file.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
        raise CheckpointNotFound(f"{what} does not exist") from error
    return unseal(raw, what)


def verify_sealed(file: Path, what: str) -> None:
    """Check ``file`` against its trailer, reading it in blocks (never all of it at once)."""
    try:
        handle = file.open("rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
        raise CheckpointNotFound(f"{what} does not exist") from error
    with handle:
        size = os.fstat(handle.fileno()).st_size
        handle.seek(max(0, size - TRAILER_SIZE))
        digest, remaining = _trailer(handle.read(), size, what)
        handle.seek(0)
        hasher = hashlib.sha256()
        while remaining > 0:
            block = handle.read(min(_BLOCK, remaining))
            if not block:  # shrank while we read it
                raise CheckpointCorrupt(f"{what} cannot be read: it was truncated while read")
            hasher.update(block)
            remaining -= len(block)
    if hasher.hexdigest() != digest:
        raise _mismatch(what, digest, hasher.hexdigest())
