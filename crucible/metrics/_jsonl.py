"""JsonlMetricsStore: one JSON record per line, group-committed by a background writer."""

from __future__ import annotations

import os
import warnings

import msgspec

from ._buffered import BufferedStore
from ._errors import CorruptLinesWarning
from ._jsonl_file import JsonlFile, Truncation
from ._jsonl_lines import ScanReport
from ._query import Query
from ._record import MetricRecord

__all__ = ["JsonlMetricsStore"]

_json = msgspec.json.encode


class JsonlMetricsStore(BufferedStore):
    """Metrics in a JSONL file: human-readable, append-only, safe to share between processes.

    `record` returns as soon as the record is buffered; the writer thread appends batches and
    fsyncs at least every `flush_interval` seconds (the most a crash can lose), at `flush()`
    and at `close()`. With `durable=True` each `record` returns only after its fsync.

    Opening repairs a tail torn by a crash. Reads skip lines that are not valid records and
    warn with `CorruptLinesWarning`; `scan()` lists them; they are never rewritten.
    Opening does blocking I/O: in async code prefer `await open_store(url)`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durable: bool = False,
        flush_interval: float = 0.2,
        max_batch: int = 65536,
    ) -> None:
        self._file = JsonlFile(path)
        super().__init__(
            self._file,
            durable=durable,
            flush_interval=flush_interval,
            max_batch=max_batch,
            name=f"crucible-metrics-jsonl:{self._file.path.name}",
        )

    @property
    def path(self) -> os.PathLike[str]:
        return self._file.path

    def _load(self, needles: tuple[bytes, ...] = ()) -> list[MetricRecord]:
        records, bad, _torn = self._file.read_all(needles)
        if bad:
            numbers = ", ".join(str(b.line) for b in bad[:20])
            more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
            warnings.warn(
                f"{self._file.path}: skipped {len(bad)} line(s) that are not valid metric "
                f"records (line {numbers}{more}); the file was left unchanged",
                CorruptLinesWarning,
                stacklevel=4,
            )
        return records

    def _read(self, query: Query) -> list[MetricRecord]:
        # With a metric filter, decode only lines that can match (most of a big file is
        # other metrics); a run filter alone rarely narrows a file enough to pay off.
        needles = () if query.metric is None else (_json(query.metric),)
        return query.apply(self._load(needles))

    async def scan(self) -> ScanReport:
        """Read the whole file and report every line that is not a valid record."""

        def scan() -> ScanReport:
            records, bad, torn = self._file.read_all()
            return ScanReport(records=len(records), bad_lines=bad, torn_tail=torn)

        return await self._query(scan)

    async def _select(self, query: Query) -> list[MetricRecord]:
        return await self._query(self._read, query)

    async def runs(self) -> list[str]:
        def runs() -> list[str]:
            return sorted({r.run_id for r in self._load()})

        return await self._query(runs)

    async def delete_run(self, run_id: str) -> int:
        """Remove a run's records by atomically replacing the file (the only rewrite)."""
        return await self._query(self._file.rewrite_without, run_id)

    async def truncate_after(self, step: int) -> Truncation:
        """Drop every record whose step is after `step`, and a torn last line (on resume
        from the checkpoint at `step`, so each (metric, step) ends up recorded once).

        Records recorded before the call are written first, then the file is replaced
        atomically; lines that are not records are kept verbatim, records without a step are
        kept. Idempotency keys follow their batches: a key stays stored while its batch keeps
        a record, and a batch with no record left is forgotten, so re-sending it with the
        same key stores it again, exactly once.
        """
        if type(step) is not int:
            raise TypeError(f"step must be an int, got {step!r}")
        return await self._query(self._file.truncate_after, step)

    def _release(self) -> None:
        self._file.close()
