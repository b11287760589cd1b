"""FaultyBackend: wraps any TrainingBackend and injects faults, reproducibly per seed.

Each operation (on the backend and on the sampling clients it hands out) draws from one
``random.Random(seed)`` in call order, so the same seed and the same sequence of calls give
the same faults. With probability ``rate`` an operation gets one fault, chosen uniformly among
``kinds``:

==================== ============================================================== =========
kind                 what happens                                                   applied?
==================== ============================================================== =========
latency              a delay from the latency distribution, then the op runs        yes
transient            submitting raises BackendOpFailed; the inner op is not called  no
crash                submitting raises BackendCrashed; so does every later call     no
applied_then_failed  the inner op runs to completion, then awaiting raises          yes
                     BackendOpFailed (the caller cannot tell it was applied)
hang                 the result never arrives (until the waiter is cancelled); the  no
                     backend is wedged: every later call hangs too, like a Tinker
                     TrainingClient whose queued future was cancelled
==================== ============================================================== =========

``transient`` and ``applied_then_failed`` raise the same type with the same message on
purpose: a caller cannot tell them apart, exactly as with a lost connection. The ``injected``
log says which was which, for tests and benchmarks.

The faults model a lost connection, so they sit in front of the backend's record of requests:
over ``ApplyOnce(backend)``, a retry of an ``applied_then_failed`` operation with the same
request id is answered from the record and never applied twice, and a retry of a
``transient`` one is applied once, in its place.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal, NoReturn, TypeVar

import anyio
import attrs

from crucible.training.port import OPERATIONS, BackendCrashed, BackendOpFailed, DeferredResult

T = TypeVar("T")
FaultKind = Literal["latency", "transient", "crash", "applied_then_failed", "hang"]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = (
    "latency",
    "transient",
    "crash",
    "applied_then_failed",
    "hang",
)


@attrs.frozen
class LatencyDistribution:
    """Exponential delays with mean ``mean_s``, capped at ``max_s`` (a long tail, bounded)."""

    mean_s: float = 0.002
    max_s: float = 0.05

    def draw(self, rng: random.Random) -> float:
        return min(rng.expovariate(1.0 / self.mean_s), self.max_s) if self.mean_s > 0 else 0.0


@attrs.frozen
class InjectedFault:
    """One fault that was injected: the op's index among all calls, its name and the kind."""

    call_index: int
    op: str
    kind: FaultKind
    delay_s: float = 0.0


class FaultSource:
    """The shared random stream and the crashed/wedged state of one FaultyBackend."""

    def __init__(
        self,
        seed: int,
        rate: float,
        kinds: Sequence[FaultKind],
        latency: LatencyDistribution,
        ops: frozenset[str] | None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be in [0, 1], got {rate}")
        unknown = sorted(set(kinds) - set(FAULT_KINDS))
        if unknown or not kinds:
            raise ValueError(f"fault kinds must be a non-empty subset of {FAULT_KINDS}: {kinds}")
        unknown_ops = sorted(set(ops or ()) - set(OPERATIONS))
        if unknown_ops:
            raise ValueError(f"fault ops {unknown_ops} are not operations; known: {OPERATIONS}")
        self.rng = random.Random(seed)
        self.rate = rate
        self.kinds = tuple(kind for kind in FAULT_KINDS if kind in set(kinds))  # stable order
        self.latency = latency
        self.ops = ops
        self.calls = 0
        self.crashed = False
        self.wedged = False
        self.injected: list[InjectedFault] = []

    def draw(self, op: str) -> InjectedFault | None:
        index = self.calls
        self.calls += 1
        # Draw for every call, even ops that are exempt, so the stream does not depend on `ops`.
        roll = self.rng.random()
        kind = self.rng.choice(self.kinds)
        delay = self.latency.draw(self.rng) if kind == "latency" else 0.0
        if roll >= self.rate or (self.ops is not None and op not in self.ops):
            return None
        fault = InjectedFault(index, op, kind, delay)
        self.injected.append(fault)
        return fault

    async def run(self, op: str, submit: Callable[[], Awaitable[Awaitable[T]]]) -> Awaitable[T]:
        """Submit ``op`` through ``submit`` with whatever fault the stream decides."""
        if self.crashed:
            raise BackendCrashed(f"{op}: the backend crashed earlier and is unusable")
        if self.wedged:
            return DeferredResult(_never)
        fault = self.draw(op)
        if fault is None:
            return await submit()
        if fault.kind == "latency":
            await anyio.sleep(fault.delay_s)
            return await submit()
        if fault.kind == "transient":
            raise BackendOpFailed(_LOST_MESSAGE.format(op=op))
        if fault.kind == "crash":
            self.crashed = True
            raise BackendCrashed(f"{op}: the backend crashed (injected fault)")
        if fault.kind == "hang":
            self.wedged = True
            return DeferredResult(_never)
        inner = await submit()  # applied_then_failed

        async def fail_after_applied() -> T:
            await inner
            raise BackendOpFailed(_LOST_MESSAGE.format(op=op))

        return DeferredResult(fail_after_applied)


_LOST_MESSAGE: Final = "{op}: connection to the backend lost; the op may or may not have run"


async def _never() -> NoReturn:
    await anyio.sleep_forever()
    raise AssertionError("sleep_forever returned")  # pragma: no cover
