"""Sessions, the training models they own, and the futures of accepted requests.

Mutating operations answer with a request id at once; the work runs in the server's task
group and its outcome lands in the FutureTable for ``retrieve_future``. Every identifier the
SDK derives itself is honoured: models are ``<session>:train:<model_seq_id>`` (the SDK builds
that id on its own after create-via-load) and sampling sessions ``<session>:sample:<seq>``.
Retried requests (after a lost answer) map to the first answer.

Sessions are stored under the root, so a restarted server still knows them (their clients go
on heartbeating); the models they trained lived in the old process and are answered 410 with
the way back: a new training client from the run's last checkpoint. A session whose heartbeats
stop for ``session_timeout_s`` expires and its models are freed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import attrs
from anyio.abc import TaskGroup

from crucible.tinker_server._config import ServerConfig
from crucible.tinker_server._errors import ServiceError, category, describe
from crucible.tinker_server._futures import FutureTable, Outcome, Pending
from crucible.tinker_server._models import TrainingModel
from crucible.tinker_server._records import Records, SessionFile
from crucible.training import CheckpointNotFound

T = TypeVar("T")


def model_id_of(session_id: str, model_seq_id: int | None) -> str:
    return f"{session_id}:train:{model_seq_id}"


def sampler_id_of(session_id: str, sampling_session_seq_id: int | None) -> str:
    return f"{session_id}:sample:{sampling_session_seq_id}"


@attrs.define
class SessionRecord:
    stored: SessionFile
    last_seen: float  # anyio.current_time() of the last heartbeat (or creation, or restart)

    @property
    def session_id(self) -> str:
        return self.stored.session_id

    @property
    def finished(self) -> bool:
        return self.stored.status is not None


class Sessions:
    def __init__(self, config: ServerConfig, task_group: TaskGroup, records: Records) -> None:
        self.config = config
        self.records = records
        self.futures = FutureTable()
        self._tasks = task_group
        self.sessions: dict[str, SessionRecord] = {}
        self.models: dict[str, TrainingModel] = {}
        self._finished_models: set[str] = set()
        self._created_sessions: dict[str, str] = {}
        self._created_models: dict[tuple[str, int], str] = {}
        self._changed = anyio.Event()  # a session started: the expiry loop recomputes
        now = anyio.current_time()
        for stored in records.sessions():
            self.sessions[stored.session_id] = SessionRecord(stored, now)

    # -- futures ----------------------------------------------------------------------------

    def finish(
        self,
        pending: Pending,
        work: Callable[[], Awaitable[T]],
        encode: Callable[[T], Outcome],
    ) -> None:
        """Run ``work`` in the server's task group and store its outcome for retrieval."""

        async def run() -> None:
            try:
                result = await work()
            except Exception as error:
                pending.resolve(Outcome.failed(describe(error), category(error)))
            else:
                pending.resolve(encode(result))

        self._tasks.start_soon(run)

    async def submit(
        self, pending: Pending, submission: Awaitable[Awaitable[T]], encode: Callable[[T], Outcome]
    ) -> None:
        """Queue on the backend now (in seq order); await the result in the task group."""
        try:
            future = await submission
        except Exception as error:
            pending.resolve(Outcome.failed(describe(error), category(error)))
            return

        async def result() -> T:
            return await future

        self.finish(pending, result, encode)

    # -- sessions ---------------------------------------------------------------------------

    def session(self, session_id: str) -> SessionRecord:
        record = self.sessions.get(session_id)
        if record is None:
            raise ServiceError(404, f"no session {session_id!r} on this server")
        if record.finished:
            detail = record.stored.status or {}
            why = detail.get("detail") or f"it ended ({detail.get('type')})"
            raise ServiceError(410, f"session {session_id!r} has finished: {why}")
        return record

    async def create_session(self, idempotency_key: str | None, request: Any) -> str:
        if idempotency_key and idempotency_key in self._created_sessions:
            return self._created_sessions[idempotency_key]
        session_id = secrets.token_hex(8)
        stored = SessionFile(
            session_id,
            created=time.time(),
            tags=list(request.tags),
            user_metadata=request.user_metadata or None,
            display_name=request.display_name,
            project_id=request.project_id,
        )
        await anyio.to_thread.run_sync(self.records.write_session, stored)
        self.sessions[session_id] = SessionRecord(stored, anyio.current_time())
        if idempotency_key:
            self._created_sessions[idempotency_key] = session_id
        self._changed.set()
        return session_id

    async def save_session(self, record: SessionRecord) -> None:
        await anyio.to_thread.run_sync(self.records.write_session, record.stored)

    def heartbeat(self, session_id: str) -> None:
        self.session(session_id).last_seen = anyio.current_time()

    async def finish_session(self, session_id: str, status: dict[str, Any]) -> None:
        record = self.sessions.get(session_id)
        if record is None or record.finished:
            return
        record.stored.status = status
        for model_id in record.stored.training_run_ids:
            model = self.models.pop(model_id, None)
            self._finished_models.add(model_id)
            if model is not None:
                self._tasks.start_soon(model.backend.aclose)
        await self.save_session(record)

    async def expire_idle_sessions(self) -> None:
        """Runs for the server's life: a session not heard from for ``session_timeout_s``
        ends (``cancelled``) and frees its models."""
        timeout = self.config.session_timeout_s
        while True:
            self._changed = anyio.Event()
            active = [record for record in self.sessions.values() if not record.finished]
            now = anyio.current_time()
            for record in active:
                if now - record.last_seen >= timeout:
                    await self.finish_session(
                        record.session_id,
                        {
                            "type": "cancelled",
                            "detail": f"no heartbeat for {timeout:g} s: the session expired "
                            "and its models were freed",
                        },
                    )
                    if self.config.on_session_expired is not None:
                        self.config.on_session_expired(record.session_id)
            deadlines = [r.last_seen + timeout for r in active if not r.finished]
            with anyio.move_on_after(max(min(deadlines, default=now + timeout) - now, 0.0)):
                await self._changed.wait()

    # -- training models ----------------------------------------------------------------------

    def model(self, model_id: str) -> TrainingModel:
        model = self.models.get(model_id)
        if model is None and model_id in self._finished_models:
            self.session(model_id.split(":train:")[0])  # raises 410, saying why it ended
            raise ServiceError(410, f"the session of model {model_id!r} has finished")
        if model is None:
            try:
                run = self.records.read_run_now(model_id)
            except CheckpointNotFound:
                run = None
            if run is not None:
                raise ServiceError(
                    410,
                    f"training model {model_id!r} was lost when the server restarted; its run "
                    "and checkpoints are kept: create a new training client from its last "
                    "checkpoint (ServiceClient.create_training_client_from_state_with_optimizer"
                    "; RestClient.get_training_run gives the last checkpoint's path)",
                )
            raise ServiceError(404, f"no training model {model_id!r} on this server")
        self.session(model.session_id)
        return model

    def creating(self, session_id: str, model_seq_id: int) -> str | None:
        """The request id of the model creation already accepted under this seq id, if any."""
        return self._created_models.get((session_id, model_seq_id))

    def create(self, session_id: str, model_seq_id: int) -> Pending:
        """Accept the creation of model ``model_seq_id`` of the session."""
        pending = self.futures.new()
        self._created_models[(session_id, model_seq_id)] = pending.request_id
        return pending

    def add_model(self, model: TrainingModel) -> None:
        self.models[model.model_id] = model
        record = self.sessions[model.session_id]
        record.stored.training_run_ids.append(model.model_id)
        self._tasks.start_soon(self.save_session, record)

    def add_sampler(self, session_id: str, sampler_id: str) -> None:
        record = self.sessions[session_id]
        if sampler_id not in record.stored.sampler_ids:
            record.stored.sampler_ids.append(sampler_id)
            self._tasks.start_soon(self.save_session, record)

    async def aclose(self) -> None:
        models = list(self.models.values())
        self.models.clear()
        for model in models:
            await model.backend.aclose()
