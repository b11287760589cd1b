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
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal, NoReturn, TypeVar

import anyio
import attrs
from tinker import types

from crucible.training._errors import BackendCrashed, BackendOpFailed
from crucible.training._futures import DeferredResult
from crucible.training._protocol import SamplingClient, Tokenizer, TrainingBackend

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


class _FaultSource:
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


class FaultySamplingClient:
    def __init__(self, inner: SamplingClient, source: _FaultSource) -> None:
        self._inner = inner
        self._source = source

    async def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
    ) -> Awaitable[types.SampleResponse]:
        return await self._source.run(
            "sample", lambda: self._inner.sample(prompt, num_samples, sampling_params)
        )

    async def compute_logprobs(self, prompt: types.ModelInput) -> Awaitable[list[float | None]]:
        return await self._source.run(
            "compute_logprobs", lambda: self._inner.compute_logprobs(prompt)
        )


class FaultyBackend:
    """A TrainingBackend that injects faults into ``inner``'s operations (see module doc).

    ``ops`` limits faults to the named operations (for example ``{"optim_step"}``); the random
    stream is drawn for every call regardless, so schedules stay comparable.
    """

    def __init__(
        self,
        inner: TrainingBackend,
        seed: int,
        rate: float,
        kinds: Sequence[FaultKind] = FAULT_KINDS,
        *,
        latency: LatencyDistribution = LatencyDistribution(),
        ops: Sequence[str] | None = None,
    ) -> None:
        self.inner = inner
        self._source = _FaultSource(
            seed, rate, kinds, latency, None if ops is None else frozenset(ops)
        )

    @property
    def injected(self) -> list[InjectedFault]:
        """Every fault injected so far, in order."""
        return list(self._source.injected)

    @property
    def crashed(self) -> bool:
        return self._source.crashed

    @property
    def tokenizer(self) -> Tokenizer:
        return self.inner.tokenizer

    def info(self) -> types.GetInfoResponse:
        return self.inner.info()

    async def forward_backward(
        self, data: Sequence[types.Datum], loss_fn: str = "cross_entropy"
    ) -> Awaitable[types.ForwardBackwardOutput]:
        return await self._source.run(
            "forward_backward", lambda: self.inner.forward_backward(data, loss_fn)
        )

    async def forward(
        self, data: Sequence[types.Datum], loss_fn: str = "cross_entropy"
    ) -> Awaitable[types.ForwardBackwardOutput]:
        return await self._source.run("forward", lambda: self.inner.forward(data, loss_fn))

    async def optim_step(self, adam_params: types.AdamParams) -> Awaitable[types.OptimStepResponse]:
        return await self._source.run("optim_step", lambda: self.inner.optim_step(adam_params))

    async def save_state(self, name: str) -> Awaitable[types.SaveWeightsResponse]:
        return await self._source.run("save_state", lambda: self.inner.save_state(name))

    async def load_state(
        self, path: str, with_optimizer: bool = True
    ) -> Awaitable[types.LoadWeightsResponse]:
        return await self._source.run(
            "load_state", lambda: self.inner.load_state(path, with_optimizer)
        )

    async def save_weights_for_sampler(
        self, name: str
    ) -> Awaitable[types.SaveWeightsForSamplerResponse]:
        return await self._source.run(
            "save_weights_for_sampler", lambda: self.inner.save_weights_for_sampler(name)
        )

    async def delete_checkpoint(self, path: str) -> Awaitable[None]:
        return await self._source.run(
            "delete_checkpoint", lambda: self.inner.delete_checkpoint(path)
        )

    async def sampling_client(self, path: str | None = None) -> Awaitable[SamplingClient]:
        inner = await self._source.run("sampling_client", lambda: self.inner.sampling_client(path))

        async def wrap() -> SamplingClient:
            return FaultySamplingClient(await inner, self._source)

        return DeferredResult(wrap)

    async def aclose(self) -> None:
        await self.inner.aclose()
