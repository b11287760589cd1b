"""FaultyBackend: any TrainingBackend, with the faults of ``_faults`` injected."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from tinker import types

from crucible.training.backends.faulty._faults import (
    FAULT_KINDS,
    FaultKind,
    FaultSource,
    InjectedFault,
    LatencyDistribution,
)
from crucible.training.port import (
    DeferredResult,
    RequestId,
    SamplingClient,
    Tokenizer,
    TrainingBackend,
    applies_once,
    loss_args,
    retries_itself,
)

_DEFAULT_LATENCY = LatencyDistribution()


def _tagged(request_id: RequestId | None) -> dict[str, Any]:
    """The request id for the inner backend, passed on only when the caller gave one (an inner
    backend that does not apply once takes no ``request_id``)."""
    return {} if request_id is None else {"request_id": request_id}


class FaultySamplingClient:
    def __init__(self, inner: SamplingClient, source: FaultSource) -> None:
        self._inner = inner
        self._source = source

    @property
    def applies_once(self) -> bool:
        return applies_once(self._inner)

    async def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
        *,
        request_id: RequestId | None = None,
    ) -> Awaitable[types.SampleResponse]:
        inner: Any = self._inner
        return await self._source.run(
            "sample",
            lambda: inner.sample(prompt, num_samples, sampling_params, **_tagged(request_id)),
        )

    async def compute_logprobs(
        self, prompt: types.ModelInput, *, request_id: RequestId | None = None
    ) -> Awaitable[list[float | None]]:
        inner: Any = self._inner
        return await self._source.run(
            "compute_logprobs", lambda: inner.compute_logprobs(prompt, **_tagged(request_id))
        )


class FaultyBackend:
    """A TrainingBackend that injects faults into ``inner``'s operations (see module doc).

    Each operation takes ``request_id=`` and passes it on to ``inner`` (which must then apply
    once, e.g. ``ApplyOnce``): the faults model a lost connection in front of the backend's
    record of requests, so a retry of an "applied then failed" request is answered from the
    record instead of being applied twice.

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
        # The same object, typed loosely: a request id reaches it only when the caller gave one.
        self._tagged: Any = inner
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
    def applies_once(self) -> bool:
        """As ``inner``: the faults model a lost connection, outside its record of requests."""
        return applies_once(self.inner)

    @property
    def retries_itself(self) -> bool:
        return retries_itself(self.inner)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.inner.tokenizer

    def info(self) -> types.GetInfoResponse:
        return self.inner.info()

    async def forward_backward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        request_id: RequestId | None = None,
    ) -> Awaitable[types.ForwardBackwardOutput]:
        args = loss_args(loss_fn, loss_fn_config)
        return await self._source.run(
            "forward_backward",
            lambda: self._tagged.forward_backward(data, *args, **_tagged(request_id)),
        )

    async def forward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        request_id: RequestId | None = None,
    ) -> Awaitable[types.ForwardBackwardOutput]:
        args = loss_args(loss_fn, loss_fn_config)
        return await self._source.run(
            "forward", lambda: self._tagged.forward(data, *args, **_tagged(request_id))
        )

    async def optim_step(
        self, adam_params: types.AdamParams, *, request_id: RequestId | None = None
    ) -> Awaitable[types.OptimStepResponse]:
        return await self._source.run(
            "optim_step", lambda: self._tagged.optim_step(adam_params, **_tagged(request_id))
        )

    async def save_state(
        self, name: str, *, request_id: RequestId | None = None
    ) -> Awaitable[types.SaveWeightsResponse]:
        return await self._source.run(
            "save_state", lambda: self._tagged.save_state(name, **_tagged(request_id))
        )

    async def load_state(
        self, path: str, with_optimizer: bool = True, *, request_id: RequestId | None = None
    ) -> Awaitable[types.LoadWeightsResponse]:
        return await self._source.run(
            "load_state",
            lambda: self._tagged.load_state(path, with_optimizer, **_tagged(request_id)),
        )

    async def save_weights_for_sampler(
        self, name: str, *, request_id: RequestId | None = None
    ) -> Awaitable[types.SaveWeightsForSamplerResponse]:
        return await self._source.run(
            "save_weights_for_sampler",
            lambda: self._tagged.save_weights_for_sampler(name, **_tagged(request_id)),
        )

    async def delete_checkpoint(
        self, path: str, *, request_id: RequestId | None = None
    ) -> Awaitable[None]:
        return await self._source.run(
            "delete_checkpoint",
            lambda: self._tagged.delete_checkpoint(path, **_tagged(request_id)),
        )

    async def sampling_client(
        self, path: str | None = None, *, request_id: RequestId | None = None
    ) -> Awaitable[SamplingClient]:
        inner = await self._source.run(
            "sampling_client",
            lambda: self._tagged.sampling_client(path, **_tagged(request_id)),
        )

        async def wrap() -> SamplingClient:
            return FaultySamplingClient(await inner, self._source)

        return DeferredResult(wrap)

    async def aclose(self) -> None:
        await self.inner.aclose()
