"""FaultyBackend: any TrainingBackend, with the faults of ``_faults`` injected."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from tinker import types

from crucible.training.backends.faulty._faults import (
    FAULT_KINDS,
    FaultKind,
    FaultSource,
    InjectedFault,
    LatencyDistribution,
)
from crucible.training.port import DeferredResult, SamplingClient, Tokenizer, TrainingBackend

_DEFAULT_LATENCY = LatencyDistribution()


class FaultySamplingClient:
    def __init__(self, inner: SamplingClient, source: FaultSource) -> None:
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
        latency: LatencyDistribution = _DEFAULT_LATENCY,
        ops: Sequence[str] | None = None,
    ) -> None:
        self.inner = inner
        self._source = FaultSource(
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
