"""The supervised training session: ordered backend work that survives backend failures.

Every operation that depends on its place in the sequence (forward_backward, forward,
optim_step, save_state, save_weights_for_sampler, load_state) goes into a journal shared by
all incarnations of the Session actor: the operations since the last state checkpoint. When an
operation fails (an error, a crashed or wedged backend), nobody can tell whether it was
applied, so it is never retried in place: the session crashes, its supervisor starts a new
incarnation, which builds a fresh backend, loads the last state checkpoint and replays the
journal in order, answering the callers still waiting. The run ends with the weights of a run
without failures. Position-independent reads (sampling from saved weights) are retried with
backoff instead.

Callers hold an ``Operation`` (Tinker's second stage): waiting on it, cancelling the wait or
timing out never cancels backend work; the operation belongs to the journal until it is done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Generic, Literal, TypeVar

import anyio
import attrs
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from tinker import types

from crucible.actors import Actor, ExitReason, Request, handler
from crucible.telemetry import execute
from crucible.training._errors import (
    BackendOpFailed,
    CheckpointCorrupt,
    CheckpointMismatch,
    CheckpointNotFound,
    InvalidCheckpointPath,
    InvalidDatum,
    UnsupportedLossFn,
)
from crucible.training._protocol import SamplingClient, Tokenizer, TrainingBackend

log = logging.getLogger("crucible.training")

T = TypeVar("T")
BackendFactory = Callable[[int], TrainingBackend]
"""Builds the backend for incarnation ``n`` (0, 1, ...). Every backend it returns must be able
to load the state checkpoints the others saved (same base model, LoRA config and root)."""

Status = Literal[
    "initializing", "ready", "training", "evaluating", "sampling", "completed", "failed"
]
# Operations that change the training state: kept in the journal until a state checkpoint.
STATE_OPS = frozenset({"forward_backward", "optim_step", "load_state"})
# Operations whose result depends on their place in the sequence, but that change nothing.
ORDERED_READS = frozenset({"forward", "save_state", "save_weights_for_sampler"})
# Position-independent operations (on saved weights or files): retried in place on failure.
RETRYABLE = frozenset({"sample", "compute_logprobs", "delete_checkpoint"})
SAMPLER_OPS = frozenset({"sample", "compute_logprobs"})
OPS = STATE_OPS | ORDERED_READS | RETRYABLE
# Errors that mean the request itself was bad: the backend applied nothing, so the operation
# is dropped from the journal and the error goes to its caller (replaying would fail again).
REJECTED = (
    InvalidDatum,
    UnsupportedLossFn,
    InvalidCheckpointPath,
    CheckpointNotFound,
    CheckpointMismatch,
    CheckpointCorrupt,
)


class TrainingFailed(Exception):
    """The training tree gave up (more restarts than allowed); names the last failure."""


class UnknownOperation(ValueError):
    """The session was asked for an operation it does not have."""


class OperationTimedOut(Exception):
    """A backend operation did not finish within the session's ``op_timeout`` (a hang)."""


class Operation(Generic[T]):
    """One submitted operation: await it (any number of times) for its result.

    Resolved by whichever incarnation of the session completes it."""

    __slots__ = ("_done", "args", "error", "op", "result", "seq")

    def __init__(self, seq: int, op: str, args: tuple[Any, ...]) -> None:
        self.seq = seq
        self.op = op
        self.args = args
        self.result: Any = None
        self.error: BaseException | None = None
        self._done = anyio.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def resolve(self, result: Any) -> None:
        if not self._done.is_set():
            self.result = result
            self._done.set()

    def fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self.error = error
            self._done.set()

    async def wait(self) -> T:
        await self._done.wait()
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[no-any-return]

    def __await__(self) -> Any:
        return self.wait().__await__()

    def __repr__(self) -> str:
        state = "done" if self.done else "pending"
        return f"<Operation #{self.seq} {self.op} {state}>"


@attrs.define
class Journal:
    """What every incarnation of a session shares: how to build a backend, the state checkpoint
    to start from, and the operations submitted since (in order)."""

    make_backend: BackendFactory
    base: str | None = None  # state checkpoint path; None starts from the fresh base model
    entries: list[Operation[Any]] = attrs.field(factory=list)
    incarnations: int = 0
    steps: int = 0  # optim steps applied in the surviving timeline
    last_failure: str | None = None
    failure: TrainingFailed | None = None
    tokenizer: Tokenizer | None = None
    info: types.GetInfoResponse | None = None
    gave_up: anyio.Event = attrs.field(factory=anyio.Event)
    _next_seq: int = 0

    def new(self, op: str, args: tuple[Any, ...]) -> Operation[Any]:
        entry: Operation[Any] = Operation(self._next_seq, op, args)
        self._next_seq += 1
        return entry

    def drop(self, entry: Operation[Any]) -> None:
        if entry in self.entries:
            self.entries.remove(entry)

    def checkpointed(self, entry: Operation[Any], path: str) -> None:
        """A state checkpoint completed at ``entry``: replays start from it from now on."""
        index = self.entries.index(entry)
        self.base = path
        self.entries = self.entries[index + 1 :]

    def give_up(self, error: BaseException | None) -> None:
        why = self.last_failure or (str(error) if error else "the session was stopped")
        self.failure = TrainingFailed(
            f"training gave up after {max(self.incarnations - 1, 0)} restarts; last failure: {why}"
        )
        self.failure.__cause__ = error
        for entry in self.entries:
            entry.fail(self.failure)
        self.gave_up.set()


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
        read_retries: int = 3,
        read_backoff: float = 0.05,
    ) -> None:
        self.journal = journal
        self.op_timeout = op_timeout
        self.read_retries = read_retries
        self.read_backoff = read_backoff
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
        """Submit and wait for one operation during replay (a failure fails the restart)."""
        future = await self._submit_to_backend(entry)
        with anyio.fail_after(self.op_timeout):
            result = await future
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
        if not self._broken:  # once failing, only record: the next incarnation replays it
            try:
                future = await self._submit_to_backend(entry)
            except REJECTED:
                raise  # nothing applied, nothing journaled: the caller's request was bad
            except Exception as exc:
                self._break(entry, exc)
            else:
                self._send.send_nowait((entry, future))
        # Journaled only once submitted (or failing): if this incarnation is killed before
        # this point, the caller gets ActorDead and the client resubmits to the next one.
        self.journal.entries.append(entry)
        return entry

    async def _submit_to_backend(self, entry: Operation[Any]) -> Any:
        if entry.op in SAMPLER_OPS:
            path, *rest = entry.args
            client = await self._sampler(path)
            return await getattr(client, entry.op)(*rest)
        return await getattr(self.backend, entry.op)(*entry.args)

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
        attempt = 0
        while True:
            try:
                with anyio.fail_after(self.op_timeout):
                    return await future
            except TimeoutError:
                raise OperationTimedOut(
                    f"{entry.op} did not finish within {self.op_timeout}s (backend wedged?)"
                ) from None
            except BackendOpFailed:
                # These do not depend on their place in the sequence: retry them in place.
                if entry.op not in RETRYABLE or attempt >= self.read_retries:
                    raise
                await anyio.sleep(self.read_backoff * 2**attempt)
                attempt += 1
                future = await self._submit_to_backend(entry)

    def _completed(self, entry: Operation[Any], result: Any) -> None:
        if entry.op == "optim_step" and not entry.done:  # a replayed step was counted already
            self.journal.steps += 1
        entry.resolve(result)
        if entry.op == "save_state":
            self.journal.checkpointed(entry, result.path)
        elif entry.op not in STATE_OPS:
            self.journal.drop(entry)  # answered and changed nothing: no need to replay it

    # -- status ------------------------------------------------------------------------------

    def _track_status(self, op: str) -> None:
        if op in ("forward_backward", "optim_step") and self.status != "training":
            self._set_status("training")
        elif op == "forward" and self.status != "evaluating":
            self._set_status("evaluating")
        elif op in SAMPLER_OPS and self.status != "sampling":
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


# -- the client: the TrainingBackend protocol, supervised ----------------------------------------


class SessionClient:
    """A TrainingBackend whose operations go through the supervised Session actor.

    A recipe written for any TrainingBackend (or Tinker's TrainingClient) runs unchanged on it;
    the session survives backend failures underneath. Safe to use from many tasks.
    """

    def __init__(self, runtime: Any, name: str, journal: Journal, *, timeout: float = 60.0):
        self._runtime = runtime
        self._name = name
        self._journal = journal
        self._timeout = timeout
        self._snapshots = 0

    async def _live_session(self) -> Any:
        """The session's live incarnation, waiting through a restart; TrainingFailed if the
        tree gives up meanwhile."""
        ref = self._runtime.whereis(self._name)
        if ref is None:
            found: list[Any] = []
            with anyio.fail_after(self._timeout):
                async with anyio.create_task_group() as tg:

                    async def look() -> None:
                        found.append(await self._runtime.lookup(self._name, timeout=None))
                        tg.cancel_scope.cancel()

                    async def failed() -> None:
                        await self._journal.gave_up.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(look)
                    tg.start_soon(failed)
            ref = found[0] if found else None
        if self._journal.failure is not None:
            raise self._journal.failure
        return ref

    async def _submit(self, op: str, *args: Any) -> Operation[Any]:
        from crucible.actors import ActorDead

        while True:
            ref = await self._live_session()
            try:
                return await ref.call(Submit(op, args), timeout=self._timeout)  # type: ignore[no-any-return]
            except ActorDead:
                continue  # it stopped before taking the request: send it to the next one

    @property
    def tokenizer(self) -> Tokenizer:
        assert self._journal.tokenizer is not None
        return self._journal.tokenizer

    def info(self) -> types.GetInfoResponse:
        assert self._journal.info is not None
        return self._journal.info

    async def forward_backward(
        self, data: Sequence[types.Datum], loss_fn: str = "cross_entropy"
    ) -> Operation[types.ForwardBackwardOutput]:
        return await self._submit("forward_backward", list(data), loss_fn)

    async def forward(
        self, data: Sequence[types.Datum], loss_fn: str = "cross_entropy"
    ) -> Operation[types.ForwardBackwardOutput]:
        return await self._submit("forward", list(data), loss_fn)

    async def optim_step(self, adam_params: types.AdamParams) -> Operation[types.OptimStepResponse]:
        return await self._submit("optim_step", adam_params)

    async def train_step(
        self, data: Sequence[types.Datum], adam_params: types.AdamParams
    ) -> tuple[Operation[types.ForwardBackwardOutput], Operation[types.OptimStepResponse]]:
        """Submit forward_backward and optim_step back to back, without waiting in between."""
        return (await self.forward_backward(data), await self.optim_step(adam_params))

    async def save_state(self, name: str) -> Operation[types.SaveWeightsResponse]:
        return await self._submit("save_state", name)

    async def load_state(
        self, path: str, with_optimizer: bool = True
    ) -> Operation[types.LoadWeightsResponse]:
        return await self._submit("load_state", path, with_optimizer)

    async def save_weights_for_sampler(
        self, name: str
    ) -> Operation[types.SaveWeightsForSamplerResponse]:
        return await self._submit("save_weights_for_sampler", name)

    async def delete_checkpoint(self, path: str) -> Operation[None]:
        return await self._submit("delete_checkpoint", path)

    async def sampling_client(self, path: str | None = None) -> Operation[SamplingClient]:
        """A client over sampler weights at ``path``; with None, a snapshot of the current
        weights is saved first (in order) so the client survives backend restarts."""
        if path is None:
            self._snapshots += 1
            saved = await (await self.save_weights_for_sampler(f"snapshot_{self._snapshots:06d}"))
            path = saved.path
        done: Operation[SamplingClient] = Operation(-1, "sampling_client", (path,))
        done.resolve(SessionSamplingClient(self, path))
        return done

    async def status(self) -> SessionStatus:
        ref = await self._live_session()
        return await ref.call(GetStatus(), timeout=self._timeout)  # type: ignore[no-any-return]

    async def set_status(self, status: Status) -> None:
        ref = await self._live_session()
        await ref.call(SetStatus(status), timeout=self._timeout)

    async def aclose(self) -> None:
        """The tree owns the backend; closing the client only stops using it."""


class SessionSamplingClient:
    """Samples from saved weights through the session (retried on failure, survives restarts)."""

    def __init__(self, session: SessionClient, path: str) -> None:
        self._session = session
        self.path = path

    async def sample(
        self, prompt: types.ModelInput, num_samples: int, sampling_params: types.SamplingParams
    ) -> Operation[types.SampleResponse]:
        return await self._session._submit(
            "sample", self.path, prompt, num_samples, sampling_params
        )

    async def compute_logprobs(self, prompt: types.ModelInput) -> Operation[list[float | None]]:
        return await self._session._submit("compute_logprobs", self.path, prompt)
