"""RemoteRuns: create, update and heartbeat a run in the metric service, through the remote
store's offline buffer, so a service that is down never blocks the caller or loses a word.

Each call is checked on the caller's thread (a bad field raises `InvalidRun` at once), then
spooled in order with the run's metric batches and delivered by the store's delivery
thread. Every run request is idempotent on the server (create resumes, update sets or
merges, a heartbeat keeps the latest time), so a re-sent one is harmless.
"""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from ._remote import RemoteMetricsStore
from ._runs import RunSpec, RunUpdate, check_spec, check_update
from ._writer import Chunk

__all__ = ["RemoteRuns", "git_commit"]

_encode = msgspec.json.encode


def git_commit(directory: str | os.PathLike[str] | None = None) -> str | None:
    """The commit checked out where `directory` (default: the working directory) lies, or
    None outside a git repository (or without git)."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(directory) if directory is not None else None,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = found.stdout.strip()
    return commit if found.returncode == 0 and commit else None


class RemoteRuns:
    """The run half of a `RemoteMetricsStore`: `RemoteRuns(store)`. Nothing here blocks on
    the network; `store.flush()` (or `store.sync.flush()`) waits for delivery."""

    def __init__(self, store: RemoteMetricsStore) -> None:
        self._store = store

    def _send(self, target: str, body: bytes) -> None:
        self._store._check_open()
        self._store._writer.enqueue(Chunk([], None, (target, body)))

    def create(self, spec: RunSpec, *, fill_host_and_commit: bool = True) -> RunSpec:
        """Create the run (or resume it); returns the spec as sent. Unless told otherwise,
        fills `host` (this machine) and `git_commit` (when run inside a git repository)."""
        if fill_host_and_commit:
            spec = msgspec.structs.replace(
                spec,
                host=spec.host or socket.gethostname(),
                git_commit=spec.git_commit or git_commit(),
                started_at=spec.started_at or datetime.now(UTC),
            )
        spec = check_spec(spec)
        self._send("POST /api/v1/runs", _encode(spec))
        return spec

    def update(self, run_id: str, update: RunUpdate) -> None:
        check_spec(RunSpec(id=run_id))  # the id names a URL path segment
        update = check_update(update)
        self._send(f"PATCH /api/v1/runs/{run_id}", _encode(update))

    def heartbeat(self, run_id: str, at: datetime | None = None) -> None:
        check_spec(RunSpec(id=run_id))
        moment = (at or datetime.now(UTC)).astimezone(UTC)
        self._send(f"POST /api/v1/runs/{run_id}/heartbeat", _encode({"at": moment}))

    def delete(self, run_id: str) -> None:
        """Delete the run, its record and its points, in order with what was sent before
        (a run that is not there is refused with 404 and set aside in `rejected.log`)."""
        check_spec(RunSpec(id=run_id))
        self._send(f"DELETE /api/v1/runs/{run_id}", b"")

    def finish(self, run_id: str, status: str = "completed", **summary: float) -> None:
        """End the run: status completed (or failed), with final summary values."""
        fields: dict[str, object] = {"status": status, "ended_at": datetime.now(UTC)}
        if summary:
            fields["summary"] = summary
        self.update(run_id, msgspec.convert(fields, RunUpdate))
