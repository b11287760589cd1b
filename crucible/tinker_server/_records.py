"""What the server keeps on disk under ``--root``, so a restarted server knows it: the record
of each training run (``run.json``), the metadata of its checkpoints (``.meta.json``: creation
time, expiry, user metadata, published or not) and each session (``sessions/<id>.json``).

Every file is replaced atomically and fsynced through ``crucible._fs``. Identifiers that come
from a client are checked before they become paths: a run id is ``<session>:train:<n>`` and a
session id is 16 hex digits, so no id can name a folder outside the root (``..``, ``/``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Final

import anyio
import anyio.to_thread
import msgspec

from crucible._fs import write_bytes_atomically
from crucible.tinker_server._errors import ServiceError
from crucible.tinker_server._models import RunInfo
from crucible.tinker_server._paths import check_run_id, run_folder_name

META_FILE: Final = ".meta.json"
SESSIONS_FOLDER: Final = "sessions"
_SESSION_ID: Final = re.compile(r"[0-9a-f]{16}")
#: Tinker's bounds on a checkpoint's time to live: one hour to ten years (None: forever).
TTL_MIN_S: Final = 3600
TTL_MAX_S: Final = 10 * 365 * 24 * 3600


class CheckpointMeta(msgspec.Struct, frozen=True):
    created: float
    expires_at: float | None = None
    user_metadata: dict[str, str] | None = None
    public: bool = False


class SessionFile(msgspec.Struct):
    """A session as stored: what ``get_session`` and ``list_sessions`` answer after a restart."""

    session_id: str
    created: float
    tags: list[str] = msgspec.field(default_factory=list)
    user_metadata: dict[str, str] | None = None
    display_name: str | None = None
    project_id: str | None = None
    training_run_ids: list[str] = msgspec.field(default_factory=list)
    sampler_ids: list[str] = msgspec.field(default_factory=list)
    #: None while active; else ``{"type": "client_finished", ...}`` or ``{"type": "cancelled"}``
    status: dict[str, object] | None = None


def check_session_id(session_id: str) -> str:
    if not _SESSION_ID.fullmatch(session_id):
        raise ServiceError(404, f"no session {session_id!r} on this server")
    return session_id


def check_ttl(ttl_seconds: int | None) -> float | None:
    """The expiry time of a checkpoint saved now with ``ttl_seconds``."""
    if ttl_seconds is None:
        return None
    if not TTL_MIN_S <= ttl_seconds <= TTL_MAX_S:
        raise ServiceError(
            400,
            f"ttl_seconds must be between {TTL_MIN_S} (1 hour) and {TTL_MAX_S} (10 years), or "
            f"null for a checkpoint that never expires; got {ttl_seconds}",
        )
    return time.time() + ttl_seconds


class Records:
    """The run, checkpoint and session files under one root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = anyio.Lock()  # read-modify-write of a metadata file

    # -- runs ---------------------------------------------------------------------------------

    def run_folder(self, run_id: str) -> Path:
        return self.root / run_folder_name(check_run_id(run_id))

    def run_ids(self) -> list[str]:
        """Every run recorded under the root (their ids, from their records)."""
        ids: list[str] = []
        if not self.root.is_dir():
            return ids
        for folder in self.root.iterdir():
            record = folder / "run.json"
            if record.is_file():
                ids.append(msgspec.json.decode(record.read_bytes(), type=RunInfo).model_id)
        return ids

    async def write_run(self, run: RunInfo) -> None:
        await anyio.to_thread.run_sync(
            write_bytes_atomically,
            self.run_folder(run.model_id) / "run.json",
            msgspec.json.encode(run),
        )

    def read_run_now(self, run_id: str) -> RunInfo | None:
        record = self.run_folder(run_id) / "run.json"
        if not record.is_file():
            return None
        return msgspec.json.decode(record.read_bytes(), type=RunInfo)

    # -- checkpoint metadata ------------------------------------------------------------------

    def metadata(self, run_id: str) -> dict[str, CheckpointMeta]:
        file = self.run_folder(run_id) / META_FILE
        if not file.is_file():
            return {}
        return msgspec.json.decode(file.read_bytes(), type=dict[str, CheckpointMeta])

    async def set_metadata(
        self, run_id: str, checkpoint_id: str, meta: CheckpointMeta | None
    ) -> None:
        """Record (or, with None, forget) the metadata of one checkpoint of the run."""
        async with self._lock:
            entries = self.metadata(run_id)
            if meta is None:
                entries.pop(checkpoint_id, None)
            else:
                entries[checkpoint_id] = meta
            payload = msgspec.json.encode(entries)
            await anyio.to_thread.run_sync(
                write_bytes_atomically, self.run_folder(run_id) / META_FILE, payload
            )

    # -- sessions -----------------------------------------------------------------------------

    def _session_file(self, session_id: str) -> Path:
        return self.root / SESSIONS_FOLDER / f"{check_session_id(session_id)}.json"

    def write_session(self, session: SessionFile) -> None:
        """Blocking: sessions change rarely (creation, a new model, the end)."""
        write_bytes_atomically(self._session_file(session.session_id), msgspec.json.encode(session))

    def sessions(self) -> list[SessionFile]:
        folder = self.root / SESSIONS_FOLDER
        if not folder.is_dir():
            return []
        found = [
            msgspec.json.decode(file.read_bytes(), type=SessionFile)
            for file in folder.glob("*.json")
        ]
        return sorted(found, key=lambda session: session.created)
