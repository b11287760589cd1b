"""The remote store's offline buffer: requests not yet acknowledged by the service, on disk.

The spool is the sink of the remote store's `GroupCommitWriter`: the writer thread hands it
batches of accepted records, which it encodes into requests and appends to `spool.log`, one
`key<TAB>body` line per request; the delivery thread sends them in order and acks them.
`acked` holds the offset up to which the server has acknowledged. A crash between the
server's answer and the ack write re-sends a request, which its idempotency key makes
harmless; a torn last line (a crash mid-append) is cut off on open. The file is emptied
whenever all is acked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections import deque
from pathlib import Path

import attrs

from ._errors import MetricsError
from ._record import MetricRecord
from ._wire import encode_requests
from ._writer import Chunk

__all__ = ["Spool", "SpoolEntry", "default_buffer_dir", "open_spool"]


@attrs.frozen
class SpoolEntry:
    key: str
    body: bytes
    end: int  # file offset just past this entry's line
    ticket: int  # the writer ticket this entry completes (0: from an earlier process)


class Spool:
    """The spool directory, locked against other processes; `changed` guards the entries
    and wakes the delivery thread when requests arrive."""

    def __init__(self, directory: Path, *, batch_size: int = 1000) -> None:
        self.directory = directory
        self._batch_size = batch_size
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise
        self._log_path = directory / "spool.log"
        self._fd = os.open(self._log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._ack_fd = os.open(directory / "acked", os.O_RDWR | os.O_CREAT, 0o600)
        self.changed = threading.Condition()
        self.entries: deque[SpoolEntry] = deque()
        self.accepted = 0  # writer tickets spooled so far by this process
        self._recover()
        # Requests an earlier process left (they come first): flush() and close() deliver
        # them too, though no ticket of this process waits for them.
        self.backlog = len(self.entries)

    def _recover(self) -> None:
        acked_text = os.pread(self._ack_fd, 32, 0).strip()
        acked = int(acked_text) if acked_text.isdigit() else 0
        data = self._log_path.read_bytes()
        if acked >= len(data):
            self._reset()
            return
        offset = acked
        while True:
            newline = data.find(b"\n", offset)
            if newline < 0:
                break
            key, tab, body = data[offset:newline].partition(b"\t")
            if tab:
                self.entries.append(SpoolEntry(key.decode(), body, newline + 1, 0))
            offset = newline + 1
        if offset < len(data):  # a torn last line: its request was never sent
            os.truncate(self._log_path, offset)
        self._size = offset

    def _reset(self) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._ack_fd, b"0".ljust(20), 0)
        self._size = 0

    # -- the writer's sink -------------------------------------------------------------------

    def write(self, chunks: list[Chunk]) -> None:
        """Spool the requests of `chunks`; only a call's last request completes its ticket.

        Consecutive calls without a key travel together (a loop of single `record` calls
        becomes full batches); a keyed call keeps its own requests, so its keys repeat.
        """
        groups: list[tuple[list[MetricRecord], str | None, tuple[str, bytes] | None]] = []
        for chunk in chunks:
            key = chunk.idempotency_key
            if chunk.request is not None:  # a run request keeps its place among the batches
                groups.append(([], None, chunk.request))
            elif key is None and groups and groups[-1][1] is None and groups[-1][2] is None:
                groups[-1][0].extend(chunk.records)
            else:
                groups.append((list(chunk.records), key, None))
        lines: list[bytes] = []
        completes: list[int] = []
        accepted = self.accepted
        for records, key, request in groups:
            # A run request's key is "@METHOD path": the delivery sends it there.
            parts = (
                [("@" + request[0], request[1])]
                if request is not None
                else encode_requests(records, key, self._batch_size)
            )
            before, accepted = accepted, accepted + max(1, len(records))
            for index, (part_key, body) in enumerate(parts):
                lines.append(part_key.encode() + b"\t" + body + b"\n")
                completes.append(accepted if index == len(parts) - 1 else before)
        with self.changed:
            try:
                os.write(self._fd, b"".join(lines))
            except OSError:
                # Cut back what part of it reached the file: the writer retries it whole.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                raise
            for line, ticket in zip(lines, completes, strict=True):
                raw_key, _, body = line[:-1].partition(b"\t")
                self._size += len(line)
                self.entries.append(SpoolEntry(raw_key.decode(), body, self._size, ticket))
            self.accepted = accepted
            self.changed.notify_all()

    def sync(self) -> None:
        os.fsync(self._fd)

    # -- delivery (with `changed` held) -----------------------------------------------------

    def ack(self) -> SpoolEntry:
        entry = self.entries.popleft()
        if self.backlog:
            self.backlog -= 1
        if not self.entries:
            self._reset()
        else:
            os.pwrite(self._ack_fd, str(entry.end).encode().ljust(20), 0)
        return entry

    def close(self) -> None:
        for fd in (self._fd, self._ack_fd, self._lock_fd):
            os.close(fd)


def open_spool(base: Path, *, batch_size: int) -> Spool:
    """The spool in `base`, or in `base-2`, `base-3`... when another process holds it."""
    for attempt in range(1, 1000):
        directory = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            return Spool(directory, batch_size=batch_size)
        except BlockingIOError:
            continue
    raise MetricsError(f"no free offline buffer next to {base}")


def default_buffer_dir(url: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache / "crucible" / "remote-buffer" / digest
