"""MemoryMetricsStore: the reference adapter every other adapter is tested against."""

from __future__ import annotations

import threading
from datetime import datetime

from ._adapter import StoreAdapter, SyncRecorder
from ._errors import StoreClosed
from ._query import Query
from ._record import MetricRecord
from ._runbook import RunBook
from ._runs import (
    DEFAULT_STALE_AFTER,
    RunPage,
    RunQuery,
    RunRecord,
    RunSpec,
    RunUpdate,
    stale_cutoff,
)

__all__ = ["MemoryMetricsStore"]


class _MemorySync(SyncRecorder):
    def __init__(self, store: MemoryMetricsStore) -> None:
        self._store = store

    def _submit(self, batch: list[MetricRecord], idempotency_key: str | None) -> int:
        self._store._append(batch, idempotency_key)
        return 0

    def flush(self) -> None:
        self._store._check_open()

    def close(self) -> None:
        self._store._closed = True


class MemoryMetricsStore(StoreAdapter):
    """Records in a list, guarded by a lock so tasks and threads may share it.

    Nothing survives the process; use it in tests and as the semantics reference.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[MetricRecord] = []
        self._keys: set[str] = set()
        self._closed = False
        self._sync: _MemorySync = _MemorySync(self)
        self._runs = RunBook()

    @property
    def sync(self) -> _MemorySync:
        return self._sync

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the metrics store is closed; open a new one to read or record")

    def _append(self, batch: list[MetricRecord], key: str | None) -> None:
        with self._lock:
            self._check_open()
            if not batch:
                return  # an empty batch stores nothing and does not use up its key
            if key is not None:
                if key in self._keys:
                    return
                self._keys.add(key)
            self._records.extend(batch)
            self._runs.observe(batch)

    def _snapshot(self) -> list[MetricRecord]:
        with self._lock:
            self._check_open()
            return list(self._records)

    async def flush(self) -> None:
        self._check_open()

    async def _select(self, query: Query) -> list[MetricRecord]:
        return query.apply(self._snapshot())

    async def runs(self) -> list[str]:
        return sorted({r.run_id for r in self._snapshot()})

    async def delete_run(self, run_id: str) -> int:
        with self._lock:
            self._check_open()
            kept = [r for r in self._records if r.run_id != run_id]
            deleted = len(self._records) - len(kept)
            self._records = kept
            self._runs.forget(run_id)
            return deleted

    # -- runs (RunStore) ------------------------------------------------------------------------

    async def create_run(self, spec: RunSpec) -> tuple[RunRecord, bool]:
        self._check_open()
        return self._runs.create(spec)

    async def update_run(self, run_id: str, update: RunUpdate) -> RunRecord:
        self._check_open()
        return self._runs.update(run_id, update)

    async def heartbeat(self, run_id: str, at: datetime | None = None) -> None:
        self._check_open()
        self._runs.heartbeat(run_id, at)

    async def get_run(
        self,
        run_id: str,
        *,
        now: datetime | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> RunRecord:
        self._check_open()
        return self._runs.get(run_id, stale_cutoff(now, stale_after))

    async def list_runs(self, query: RunQuery) -> RunPage:
        self._check_open()
        return self._runs.list(query)

    async def close(self) -> None:
        self._closed = True
