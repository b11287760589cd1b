"""The JSONL file underneath JsonlMetricsStore: appending, repairing, rewriting.

Concurrency and crash rules (see docs/metrics.md):

- Every batch is written with one `os.write` on an `O_APPEND` descriptor while holding an
  exclusive `flock` on `<path>.lock`, so stores in several processes never interleave lines.
- A crash can only tear the end of the file. Before each batch, and on open, the writer holding
  the lock repairs the tail: an incomplete last line is cut off (or given its newline when it
  is a complete record), so a torn line never ends up in the middle of the file.
- Idempotency keys live in `<path>.keys` (see `_jsonl_marks`).
- Lines in the middle that are not valid records are never rewritten: reads skip them,
  `scan()` reports them with their line numbers, and the two rewrites (`delete_run`,
  `truncate_after`) keep them verbatim.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import msgspec

from crucible._fs import repair_torn_tail, write_bytes_atomically

from ._jsonl_lines import BadLine, is_record_line, parse_lines, record_decoder
from ._jsonl_marks import BatchMark, encode_marks, fold_marks, remap_marks
from ._record import MetricRecord
from ._writer import Chunk

__all__ = ["JsonlFile", "Truncation"]

_encoder = msgspec.json.Encoder()


@attrs.frozen
class Truncation:
    """What `JsonlMetricsStore.truncate_after(step)` did to the file."""

    kept: int  # lines kept (records, and lines that are not records, kept verbatim)
    dropped: int  # records after the step, plus a torn last line
    at_step: frozenset[tuple[str, int]]  # (metric, step) pairs kept at the step itself


class JsonlFile:
    """The data file, its lock file and its idempotency-key file; the writer's sink."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keys_path = Path(f"{self.path}.keys")
        self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._fd = -1
        self._keys_fd = -1
        self._keys_offset = 0  # bytes of <path>.keys already folded into _keys
        self._keys: dict[str, BatchMark] = {}
        self._keys_dirty = False
        with self.locked():
            self._repair()

    # -- locking and (re)opening ------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._reopen_if_replaced()
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _reopen_if_replaced(self) -> None:
        """Follow the path when another store replaced the file (a rewrite renames)."""
        for attr, path in (("_fd", self.path), ("_keys_fd", self._keys_path)):
            fd = getattr(self, attr)
            try:
                same = fd >= 0 and os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                if fd >= 0:
                    os.close(fd)
                flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                setattr(self, attr, os.open(path, flags, 0o644))
                if attr == "_keys_fd":
                    self._keys, self._keys_offset = {}, 0

    # -- repair (lock held) ------------------------------------------------------------------

    def _repair(self) -> int:
        """Cut a torn tail and any batch that died mid-write; return the data file's size."""
        return self._refresh_keys(repair_torn_tail(self._fd, is_record_line))

    def _refresh_keys(self, size: int) -> int:
        keys_size = os.fstat(self._keys_fd).st_size
        if keys_size == self._keys_offset:
            return size
        data = os.pread(self._keys_fd, keys_size - self._keys_offset, self._keys_offset)
        cut = data.rfind(b"\n") + 1
        if cut < len(data):  # a torn mark: its batch was never written either
            os.ftruncate(self._keys_fd, self._keys_offset + cut)
            data = data[:cut]
        self._keys_offset += cut
        valid, voids = fold_marks(data, self._keys, size)
        if valid < size:
            os.ftruncate(self._fd, valid)
        if voids:
            written = os.write(self._keys_fd, encode_marks(voids))
            self._keys_offset += written
            self._keys_dirty = True
        return valid

    # -- the sink ----------------------------------------------------------------------------

    def write(self, chunks: list[Chunk]) -> None:
        with self.locked():
            start = self._repair()
            pieces: list[bytes] = []
            marks: list[BatchMark] = []
            position = start
            for chunk in chunks:
                key = chunk.idempotency_key
                if key is not None and (key in self._keys or any(m.key == key for m in marks)):
                    continue
                data = _encoder.encode_lines(chunk.records)
                if key is not None:
                    marks.append(BatchMark(key, position, position + len(data)))
                pieces.append(data)
                position += len(data)
            keys_offset = self._keys_offset
            try:
                if marks:
                    encoded = encode_marks(marks)
                    _write_all(self._keys_fd, encoded)
                    self._keys_offset += len(encoded)
                    self._keys_dirty = True
                _write_all(self._fd, b"".join(pieces))
            except OSError:
                # A failed write (disk full...) may have left part of the batch. We still
                # hold the lock, so cut both files back: the writer retries the whole batch,
                # and a retry must not duplicate the part that made it.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
                    os.ftruncate(self._keys_fd, keys_offset)
                    self._keys_offset = keys_offset
                raise
            for mark in marks:
                self._keys[mark.key] = mark

    def sync(self) -> None:
        # Marks first: after a power cut, a durable mark whose batch is missing is voided on
        # repair, while a durable batch whose mark was lost would be stored again on retry.
        if self._keys_dirty:
            self._keys_dirty = False
            os.fsync(self._keys_fd)
        os.fsync(self._fd)

    # -- reading -----------------------------------------------------------------------------

    def read_all(
        self, needles: tuple[bytes, ...] = ()
    ) -> tuple[list[MetricRecord], list[BadLine], bool]:
        """Every record in the file (only lines holding all `needles`, when given)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], [], False
        return parse_lines(data, needles)

    # -- rewrites ----------------------------------------------------------------------------

    def rewrite_without(self, run_id: str) -> int:
        """Atomically replace the file by a copy without `run_id`'s records; keep bad lines.

        Every key stays stored: a re-sent batch of the deleted run is not stored again.
        """
        with self.locked():
            _kept, dropped = self._rewrite(lambda r: r.run_id != run_id, forget_dropped=False)
        return dropped

    def truncate_after(self, step: int) -> Truncation:
        """Atomically drop the records whose step is after `step`, and a torn last line.

        A key stays stored while its batch keeps a record in the file; a batch with no
        record left is forgotten, so re-sending it stores it again, once.
        """
        at_step: set[tuple[str, int]] = set()

        def keep(record: MetricRecord) -> bool:
            if record.step is not None and record.step > step:
                return False
            if record.step == step:
                at_step.add((record.metric, step))
            return True

        with self.locked():
            before = os.fstat(self._fd).st_size
            torn = int(repair_torn_tail(self._fd, is_record_line) < before)
            kept, dropped = self._rewrite(keep, forget_dropped=True)
        return Truncation(kept, dropped + torn, frozenset(at_step))

    def _rewrite(
        self, keep: Callable[[MetricRecord], bool], *, forget_dropped: bool
    ) -> tuple[int, int]:
        """Replace the file by its lines that are not records or that `keep` accepts, and
        the keys file by the marks moved along; return (lines kept, records dropped).

        Holds the lock (the caller takes it). A crash between the renames leaves every key
        stored (with an empty range, valid against any data file): it may forget that a
        dropped batch could be re-sent, never store a batch twice or cut the data file.
        """
        size = self._repair()
        data = os.pread(self._fd, size, 0)
        kept: list[bytes] = []
        starts: list[int] = []
        ends: list[int] = []
        new_starts: list[int | None] = []
        position = written = 0
        for line in data.split(b"\n")[:-1]:
            starts.append(position)
            position += len(line) + 1
            ends.append(position)
            try:
                record = record_decoder.decode(line)
            except msgspec.DecodeError:
                record = None  # never drop or alter what we cannot read
            if record is None or keep(record):
                kept.append(line)
                new_starts.append(written)
                written += len(line) + 1
            else:
                new_starts.append(None)
        dropped = len(starts) - len(kept)
        if dropped == 0:
            return len(kept), 0
        marks = remap_marks(self._keys, starts, new_starts, ends, forget_dropped=forget_dropped)
        stored = [BatchMark(key, 0, 0) for key in self._keys]
        write_bytes_atomically(self._keys_path, encode_marks(stored))
        write_bytes_atomically(self.path, b"".join(line + b"\n" for line in kept))
        write_bytes_atomically(self._keys_path, encode_marks(marks))
        self._reopen_if_replaced()
        self._refresh_keys(os.fstat(self._fd).st_size)
        return len(kept), dropped

    def close(self) -> None:
        for fd in (self._fd, self._keys_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._keys_fd = self._lock_fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
