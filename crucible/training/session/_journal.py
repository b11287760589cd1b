"""The session's journal: the operations since the last state checkpoint, shared by every
incarnation of the Session actor so that a new one can replay them.

Callers hold an ``Operation`` (Tinker's second stage): waiting on it, cancelling the wait or
timing out never cancels backend work; the operation belongs to the journal until it is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio
import attrs
from tinker import types

from crucible.training.port import Tokenizer, TrainingBackend

T = TypeVar("T")
BackendFactory = Callable[[int], TrainingBackend]
"""Builds the backend for incarnation ``n`` (0, 1, ...). Every backend it returns must be able
to load the state checkpoints the others saved (same base model, LoRA config and root)."""


class TrainingFailed(Exception):
    """The training tree gave up (more restarts than allowed); names the last failure."""


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
    retries: int = 0  # operations sent again in place after a failure
    # The session's own snapshots that were saved and not yet deleted: name -> path.
    snapshot_paths: dict[str, str] = attrs.field(factory=dict)
    last_failure: str | None = None
    failure: TrainingFailed | None = None
    tokenizer: Tokenizer | None = None
    info: types.GetInfoResponse | None = None
    gave_up: anyio.Event = attrs.field(factory=anyio.Event)
    _next_seq: int = 0

    @property
    def next_seq(self) -> int:
        """The sequence number (request id) the next ``new`` operation gets."""
        return self._next_seq

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
