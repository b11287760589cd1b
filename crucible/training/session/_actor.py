"""The supervised training session: ordered backend work that survives backend failures.

Every operation goes into a journal shared by all incarnations of the Session actor (the
operations since the last state checkpoint) and carries a request id, its journal sequence
number. A failed operation is retried in place, with the same request id, when the backend
can answer a repeat from its record (``_policy``): either the first attempt was applied and
the record answers, or it never arrived and is applied now, in its place; nothing is applied
twice. When the backend itself is lost (crashed, closed, wedged, out of retries, or a state
change failed on a backend without request ids), the session crashes and its supervisor
starts a new incarnation, which builds a fresh backend, loads the last state checkpoint and
replays the journal in order, answering the callers still waiting. Either way the run ends
with the weights of a run without failures.

To keep a replay short, the session saves a snapshot of its own every ``snapshot_every``
optimizer steps (a new name each time, ``_policy``), which becomes the state replays start
from; the older ones are deleted.

The journal and its operations are in ``_journal``; the client callers use is in ``_client``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from crucible.actors import Actor, ExitReason, Request, handler
from crucible.telemetry import execute
from crucible.training.port import (
    ORDERED_READS,
    REJECTED,
    SAMPLER_OPERATIONS,
    STATE_OPERATIONS,
    BackendOpFailed,
    SamplingClient,
    applies_once,
)
from crucible.training.session._journal import Journal, Operation, TrainingFailed
from crucible.training.session._policy import (
    RETRYABLE,
    SNAPSHOT_PREFIX,
    SessionRetry,
    snapshot_due,
)

log = logging.getLogger("crucible.training")

Status = Literal[
    "initializing", "ready", "training", "evaluating", "sampling", "completed", "failed"
]
# What a session accepts: everything but sampling_client, which SessionClient builds itself.
OPS = STATE_OPERATIONS | ORDERED_READS | RETRYABLE


class UnknownOperation(ValueError):
    """The session was asked for an operation it does not have."""


class OperationTimedOut(Exception):
    """A backend operation did not finish within the session's ``op_timeout`` (a hang)."""


# -- the session's protocol ----------------------------------------------------------------------


class Submit(Request[Operation[Any]], frozen=True):
    op: str
    args: tuple[Any, ...]


class GetStatus(Request["SessionStatus"], frozen=True):
    pass


class SetStatus(Request[None], frozen=True):
    status: str


class SessionStatus(msgspec.Struct, frozen=True):
    status: str
    step: int
    incarnation: int
    pending: int
    base: str | None


class Session(Actor[None]):
    """Owns one backend incarnation and submits the journal's operations to it in order."""

    caller_errors = (*REJECTED, TrainingFailed, UnknownOperation)

    def __init__(
        self,
        journal: Journal,
        *,
        op_timeout: float = 120.0,
        retry: SessionRetry | None = None,
        snapshot_every: int = 0,
    ) -> None:
        self.journal = journal
        self.op_timeout = op_timeout
        self.retry = retry if retry is not None else SessionRetry()
        self.snapshot_every = snapshot_every
        self._rng = self.retry.rng(journal.incarnations)
        self.status: str = "initializing"
        self._samplers: dict[str, SamplingClient] = {}
        self._broken = False
        self._send: MemoryObjectSendStream[tuple[Operation[Any], Any]]
        self._receive: MemoryObjectReceiveStream[tuple[Operation[Any], Any]]

    # -- life cycle ------------------------------------------------------------------------

    async def init(self) -> None:
        journal = self.journal
        incarnation = journal.incarnations
        journal.incarnations += 1
        self._set_status("initializing")
        self.backend = journal.make_backend(incarnation)
        self._rng = self.retry.rng(incarnation)
        # Request ids reach only a backend that applies each one once.
        self._request_ids = applies_once(self.backend)
        connect = getattr(self.backend, "connect", None)
        if connect is not None:  # a remote backend (Tinker) learns its model id on connecting
            with anyio.fail_after(self.op_timeout):
                await connect()
        journal.tokenizer = self.backend.tokenizer
        journal.info = self.backend.info()
        if journal.base is not None:
            try:
                await self._finish(Operation(-1, "load_state", (journal.base, True)))
            except Exception as exc:
                journal.last_failure = f"loading {journal.base}: {type(exc).__name__}: {exc}"
                raise
        # Replay what was submitted since the checkpoint, answering whoever still waits.
        for entry in list(journal.entries):
            try:
                await self._finish(entry)
            except Exception as exc:
                journal.last_failure = f"replaying {entry.op}: {type(exc).__name__}: {exc}"
                raise
        self._send, self._receive = anyio.create_memory_object_stream[tuple[Operation[Any], Any]](
            float("inf")
        )
        self.start_soon(self._complete_in_order)
        self._set_status("ready" if self.status == "initializing" else self.status)

    async def terminate(self, reason: ExitReason, state: None) -> None:
        if reason.kind == "crashed":
            if not self._broken:  # _break already named the operation that failed
                self.journal.last_failure = f"{type(reason.error).__name__}: {reason.error}"
            self._set_status("failed")
        # A crashed or wedged backend may never finish closing: give it a moment, no more.
        with anyio.move_on_after(1.0, shield=True):
            try:
                await self.backend.aclose()
            except Exception:
                log.debug("closing a failed backend raised", exc_info=True)

    async def _finish(self, entry: Operation[Any]) -> None:
        """Submit and wait for one operation during replay, retrying in place as the policy
        allows (any other failure fails the restart)."""
        result = await self._await_result(entry, None)
        self._completed(entry, result)

    # -- submitting ------------------------------------------------------------------------

    @handler
    async def submit(self, message: Submit) -> Operation[Any]:
        if self.journal.failure is not None:
            raise self.journal.failure
        if message.op not in OPS:
            raise UnknownOperation(
                f"unknown session operation {message.op!r}; one of {sorted(OPS)}"
            )
        self._track_status(message.op)
        entry = self.journal.new(message.op, message.args)
        await self._enqueue(entry)
        if message.op == "optim_step" and snapshot_due(self.journal, self.snapshot_every):
            await self._snapshot()
        return entry

    async def _enqueue(self, entry: Operation[Any]) -> None:
        """Submit ``entry`` (retrying in place as the policy allows) and journal it; raises
        a REJECTED error, with nothing journaled, when the request itself was bad."""
        if not self._broken:  # once failing, only record: the next incarnation replays it
            try:
                future = await self._submit_with_retries(entry)
            except REJECTED:
                raise  # nothing applied, nothing journaled: the caller's request was bad
            except Exception as exc:
                self._break(entry, exc)
            else:
                self._send.send_nowait((entry, future))
        # Journaled only once submitted (or failing): if this incarnation is killed before
        # this point, the caller gets ActorDead and the client resubmits to the next one.
        self.journal.entries.append(entry)

    async def _snapshot(self) -> None:
        """Save a state snapshot after the step just submitted (replays start from it once it
        completes), deleting the earlier ones that replays no longer need."""
        try:
            for name, path in list(self.journal.snapshot_paths.items()):
                if path != self.journal.base:
                    del self.journal.snapshot_paths[name]
                    await self._enqueue(self.journal.new("delete_checkpoint", (path,)))
            # Named by its own sequence number, which must come after the deletes' (ids grow
            # in submission order).
            seq = self.journal.next_seq
            await self._enqueue(self.journal.new("save_state", (f"{SNAPSHOT_PREFIX}{seq:08d}",)))
        except REJECTED as exc:  # not the caller's problem: replays just start further back
            log.warning("session snapshot refused: %s", exc)

    async def _submit_to_backend(self, entry: Operation[Any]) -> Any:
        tag = {"request_id": entry.seq} if self._request_ids else {}
        if entry.op in SAMPLER_OPERATIONS:
            path, *rest = entry.args
            client = await self._sampler(path)
            return await getattr(client, entry.op)(*rest, **tag)
        return await getattr(self.backend, entry.op)(*entry.args, **tag)

    async def _submit_with_retries(self, entry: Operation[Any]) -> Any:
        attempt = 0
        while True:
            try:
                return await self._submit_to_backend(entry)
            except BackendOpFailed as error:
                await self._before_retry(entry, attempt, error)
                attempt += 1

    async def _before_retry(self, entry: Operation[Any], attempt: int, error: Exception) -> None:
        """Wait before retry ``attempt`` of ``entry``, or re-raise ``error`` when the policy
        says the failure loses the backend."""
        if attempt >= self.retry.max_retries or not self.retry.may_retry(self.backend, entry.op):
            raise error
        delay = self.retry.backoff.delay(attempt, self._rng)
        self.journal.retries += 1
        execute(
            "crucible.session.retry",
            {"attempt": attempt + 1, "delay_s": delay},
            {"operation": entry.op, "request_id": entry.seq, "error": str(error)},
        )
        await anyio.sleep(delay)

    async def _sampler(self, path: str) -> SamplingClient:
        client = self._samplers.get(path)
        if client is None:
            with anyio.fail_after(self.op_timeout):
                client = await (await self.backend.sampling_client(path))
            self._samplers[path] = client
        return client

    def _break(self, entry: Operation[Any], error: BaseException) -> None:
        """Crash after this message: the next incarnation replays from the last checkpoint."""
        self._broken = True
        self.journal.last_failure = f"{entry.op} failed: {type(error).__name__}: {error}"
        self.crash(error)

    # -- completing, in submission order -----------------------------------------------------

    async def _complete_in_order(self) -> None:
        async for entry, future in self._receive:
            try:
                result = await self._await_result(entry, future)
            except REJECTED as exc:
                self.journal.drop(entry)  # nothing was applied: drop it, tell its caller
                entry.fail(exc)
                continue
            except Exception as exc:
                self._break(entry, exc)
                return
            self._completed(entry, result)

    async def _await_result(self, entry: Operation[Any], future: Any) -> Any:
        """The result of ``entry`` (submitting it first when ``future`` is None), sending it
        again with the same request id after a failure, as the policy allows."""
        attempt = 0
        while True:
            try:
                with anyio.fail_after(self.op_timeout):
                    if future is None:
                        future = await self._submit_to_backend(entry)
                    return await future
            except TimeoutError:
                raise OperationTimedOut(
                    f"{entry.op} did not finish within {self.op_timeout}s (backend wedged?)"
                ) from None
            except BackendOpFailed as error:
                await self._before_retry(entry, attempt, error)
                attempt += 1
                future = None

    def _completed(self, entry: Operation[Any], result: Any) -> None:
        if entry.op == "optim_step" and not entry.done:  # a replayed step was counted already
            self.journal.steps += 1
        entry.resolve(result)
        if entry.op == "save_state":
            if entry.args[0].startswith(SNAPSHOT_PREFIX):
                self.journal.snapshot_paths[entry.args[0]] = result.path
            self.journal.checkpointed(entry, result.path)
        elif entry.op not in STATE_OPERATIONS:
            self.journal.drop(entry)  # answered and changed nothing: no need to replay it

    # -- status ------------------------------------------------------------------------------

    def _track_status(self, op: str) -> None:
        if op in ("forward_backward", "optim_step") and self.status != "training":
            self._set_status("training")
        elif op == "forward" and self.status != "evaluating":
            self._set_status("evaluating")
        elif op in SAMPLER_OPERATIONS and self.status != "sampling":
            self._set_status("sampling")

    def _set_status(self, status: str) -> None:
        self.status = status
        execute(
            "crucible.session.status",
            {"step": self.journal.steps, "incarnation": self.journal.incarnations},
            {"status": status},
        )

    @handler
    def get_status(self, message: GetStatus) -> SessionStatus:
        pending = sum(not e.done for e in self.journal.entries)
        return SessionStatus(
            self.status, self.journal.steps, self.journal.incarnations, pending, self.journal.base
        )

    @handler
    def set_status(self, message: SetStatus) -> None:
        self._set_status(message.status)
