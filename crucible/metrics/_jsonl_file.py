"""The JSONL file underneath JsonlMetricsStore: appending, repairing, scanning.

Concurrency and crash rules (see docs/metrics.md):

- Every batch is written with one `os.write` on an `O_APPEND` descriptor while holding an
  exclusive `flock` on `<path>.lock`, so stores in several processes never interleave lines.
- A crash can only tear the end of the file. Before each batch, and on open, the writer holding
  the lock repairs the tail: an incomplete last line is cut off (or given its newline when it
  is a complete record), so a torn line never ends up in the middle of the file.
- Idempotency keys live in `<path>.keys`: before a keyed batch is written, a mark with the
  byte range it will occupy is appended. A mark whose range lies past the end of the data
  file belongs to a batch that died while being written: its partial records are cut off and
  the mark is voided, so retrying the batch stores it exactly once.
- Lines in the middle that are not valid records are never rewritten: reads skip them and
  `scan()` reports them with their line numbers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from ._record import MetricRecord
from ._writer import Chunk

__all__ = ["BadLine", "JsonlFile", "ScanReport", "parse_lines"]

_record_decoder = msgspec.json.Decoder(MetricRecord)
_encoder = msgspec.json.Encoder()


class BadLine(msgspec.Struct, frozen=True):
    """A line of a metrics file that is not a valid record (1-based line number)."""

    line: int
    reason: str
    text: str


class ScanReport(msgspec.Struct, frozen=True):
    """What a full read of a metrics file found."""

    records: int
    bad_lines: list[BadLine]
    torn_tail: bool  # the file ends in an incomplete line (a writer is mid-batch, or crashed)


class _BatchMark(msgspec.Struct, frozen=True, omit_defaults=True):
    """One line of `<path>.keys`: a keyed batch occupies bytes [start, end) of the data file."""

    key: str
    start: int
    end: int
    void: bool = False


_mark_decoder = msgspec.json.Decoder(_BatchMark)


def parse_lines(
    data: bytes, needles: tuple[bytes, ...] = ()
) -> tuple[list[MetricRecord], list[BadLine], bool]:
    """Decode the complete lines of `data`; return records, bad lines and whether it is torn.

    With `needles`, only lines containing the first needle are decoded (see `_select_lines`); a
    record that could match the caller's filter is never left out.
    """
    cut = data.rfind(b"\n") + 1
    body, torn = data[:cut], bool(data[cut:])
    selected = _select_lines(body, needles)
    if selected is not None:
        chosen, starts = selected
    else:
        chosen, starts = body, None
    try:
        return _record_decoder.decode_lines(chosen), [], torn  # the fast path: one call
    except msgspec.DecodeError:
        pass
    records: list[MetricRecord] = []
    bad: list[BadLine] = []
    for index, line in enumerate(chosen.split(b"\n")[:-1]):
        if not line.strip():
            continue
        try:
            records.append(_record_decoder.decode(line))
        except msgspec.DecodeError as error:
            number = index + 1 if starts is None else body.count(b"\n", 0, starts[index]) + 1
            text = line[:200].decode("utf-8", errors="replace")
            bad.append(BadLine(number, str(error), text))
    return records, bad, torn


def _select_lines(body: bytes, needles: tuple[bytes, ...]) -> tuple[bytes, list[int]] | None:
    """The lines holding the first needle (a JSON-encoded string), and where each starts.

    The caller filters the decoded records exactly; this only spares decoding lines that
    cannot match.
    Sound because, in a line without a backslash, a JSON string can only be spelled one way:
    a record whose metric is "loss" must contain the bytes `"loss"`. A body with any backslash
    (an escaped string somewhere) is not filtered: None means "decode everything".
    """
    if not needles or b"\\" in body:
        return None
    needle = needles[0]
    find, rfind = body.find, body.rfind
    pieces: list[bytes] = []
    starts: list[int] = []
    position = 0
    while (hit := find(needle, position)) >= 0:
        start = rfind(b"\n", 0, hit) + 1
        position = find(b"\n", hit) + 1  # the body ends with a newline
        pieces.append(body[start:position])
        starts.append(start)
    return b"".join(pieces), starts


class JsonlFile:
    """The data file, its lock file and its idempotency-key file; the writer's sink."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._fd = -1
        self._keys_fd = -1
        self._keys_offset = 0  # bytes of <path>.keys already folded into _keys
        self._keys: dict[str, _BatchMark] = {}
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
        """Follow the path when another store replaced the file (delete_run renames)."""
        for attr, path in (("_fd", self.path), ("_keys_fd", Path(f"{self.path}.keys"))):
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
        size = self._repair_torn_line()
        return self._refresh_keys(size)

    def _repair_torn_line(self) -> int:
        size = os.fstat(self._fd).st_size
        if size == 0 or os.pread(self._fd, 1, size - 1) == b"\n":
            return size
        # Find the start of the last line, reading backwards in blocks.
        end = size
        while end > 0:
            start = max(0, end - 65536)
            newline = os.pread(self._fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                line_start = start + newline + 1
                break
            end = start
        else:
            line_start = 0
        tail = os.pread(self._fd, size - line_start, line_start)
        try:
            _record_decoder.decode(tail)
        except msgspec.DecodeError:
            os.ftruncate(self._fd, line_start)  # a torn write: the record was never complete
            return line_start
        os.write(self._fd, b"\n")  # a complete record that only lacks its newline
        return size + 1

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
        marks: list[_BatchMark] = []
        for line in data.split(b"\n")[:-1]:
            try:
                marks.append(_mark_decoder.decode(line))
            except msgspec.DecodeError:
                continue  # not ours to judge; marks only serve retries
        # A void line cancels the last mark before it with the same key and range (a retry
        # of that batch may later write an identical mark, which stays valid).
        later_voids: Counter[tuple[str, int, int]] = Counter()
        cancelled: set[int] = set()
        for index in range(len(marks) - 1, -1, -1):
            ident = (marks[index].key, marks[index].start, marks[index].end)
            if marks[index].void:
                later_voids[ident] += 1
            elif later_voids[ident]:
                later_voids[ident] -= 1
                cancelled.add(index)
        voids: list[bytes] = []
        for index, mark in enumerate(marks):
            if mark.void:
                if self._keys.get(mark.key) == msgspec.structs.replace(mark, void=False):
                    del self._keys[mark.key]  # cancels a mark folded in by an earlier refresh
            elif index in cancelled:
                continue
            elif mark.end <= size:
                self._keys[mark.key] = mark
            else:  # the batch died mid-write: drop what reached the file, void the mark
                if size > mark.start:
                    os.ftruncate(self._fd, mark.start)
                    size = mark.start
                voids.append(_encoder.encode(msgspec.structs.replace(mark, void=True)) + b"\n")
        if voids:
            written = os.write(self._keys_fd, b"".join(voids))
            self._keys_offset += written
            self._keys_dirty = True
        return size

    # -- the sink ----------------------------------------------------------------------------

    def write(self, chunks: list[Chunk]) -> None:
        with self.locked():
            start = self._repair()
            pieces: list[bytes] = []
            marks: list[_BatchMark] = []
            position = start
            for chunk in chunks:
                key = chunk.idempotency_key
                if key is not None and (key in self._keys or any(m.key == key for m in marks)):
                    continue
                data = _encoder.encode_lines(chunk.records)
                if key is not None:
                    marks.append(_BatchMark(key, position, position + len(data)))
                pieces.append(data)
                position += len(data)
            keys_offset = self._keys_offset
            try:
                if marks:
                    encoded = b"".join(_encoder.encode(m) + b"\n" for m in marks)
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

    def rewrite_without(self, run_id: str) -> int:
        """Atomically replace the file by a copy without `run_id`'s records; keep bad lines."""
        with self.locked():
            self._repair()
            data = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
            kept: list[bytes] = []
            deleted = 0
            for line in data.split(b"\n")[:-1]:
                try:
                    record = _record_decoder.decode(line)
                except msgspec.DecodeError:
                    kept.append(line)  # never drop or alter what we cannot read
                    continue
                if record.run_id == run_id:
                    deleted += 1
                else:
                    kept.append(line)
            if deleted == 0:
                return 0
            body = b"".join(line + b"\n" for line in kept)
            # Byte offsets change: every recorded key now simply counts as stored.
            marks = b"".join(_encoder.encode(_BatchMark(key, 0, 0)) + b"\n" for key in self._keys)
            for suffix, content in (("", body), (".keys", marks)):
                target = Path(f"{self.path}{suffix}")
                temporary = target.with_name(target.name + ".rewrite")
                temporary.write_bytes(content)
                fd = os.open(temporary, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(temporary, target)
            _fsync_directory(self.path.parent)
            self._reopen_if_replaced()
            self._keys_offset = 0
            self._refresh_keys(os.fstat(self._fd).st_size)
            return deleted

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


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
