"""Sessions, the training models they own, and the futures of accepted requests.

Mutating operations answer with a request id at once; the work runs in the server's task
group and its outcome lands in the FutureTable for ``retrieve_future``. Every identifier the
SDK derives itself is honoured: models are ``<session>:train:<model_seq_id>`` (the SDK builds
that id on its own after create-via-load) and sampling sessions ``<session>:sample:<seq>``.
Retried requests (after a lost answer) map to the first answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
from anyio.abc import TaskGroup

from crucible.tinker_server._errors import ServiceError, category, describe
from crucible.tinker_server._futures import FutureTable, Outcome, Pending
from crucible.tinker_server._models import TrainingModel

T = TypeVar("T")


def model_id_of(session_id: str, model_seq_id: int | None) -> str:
    return f"{session_id}:train:{model_seq_id}"


def sampler_id_of(session_id: str, sampling_session_seq_id: int | None) -> str:
    return f"{session_id}:sample:{sampling_session_seq_id}"


@attrs.define
class SessionRecord:
    session_id: str
    finished: bool = False
    model_ids: list[str] = attrs.field(factory=list)


class Sessions:
    def __init__(self, task_group: TaskGroup) -> None:
        self.futures = FutureTable()
        self._tasks = task_group
        self.sessions: dict[str, SessionRecord] = {}
        self.models: dict[str, TrainingModel] = {}
        self._finished_models: set[str] = set()
        self._created_sessions: dict[str, str] = {}
        self._created_models: dict[tuple[str, int], str] = {}

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
            raise ServiceError(410, f"session {session_id!r} has finished")
        return record

    def create_session(self, idempotency_key: str | None) -> str:
        if idempotency_key and idempotency_key in self._created_sessions:
            return self._created_sessions[idempotency_key]
        session_id = uuid.uuid4().hex[:16]
        self.sessions[session_id] = SessionRecord(session_id)
        if idempotency_key:
            self._created_sessions[idempotency_key] = session_id
        return session_id

    def heartbeat(self, session_id: str) -> None:
        self.session(session_id)

    async def finish_session(self, session_id: str) -> None:
        record = self.sessions.get(session_id)
        if record is None or record.finished:
            return
        record.finished = True
        for model_id in record.model_ids:
            model = self.models.pop(model_id, None)
            self._finished_models.add(model_id)
            if model is not None:
                self._tasks.start_soon(model.backend.aclose)

    # -- training models ----------------------------------------------------------------------

    def model(self, model_id: str) -> TrainingModel:
        model = self.models.get(model_id)
        if model is None and model_id in self._finished_models:
            raise ServiceError(410, f"the session of model {model_id!r} has finished")
        if model is None:
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
        self.sessions[model.session_id].model_ids.append(model.model_id)

    async def aclose(self) -> None:
        models = list(self.models.values())
        self.models.clear()
        for model in models:
            await model.backend.aclose()
