"""ApplyOnce: any in-process TrainingBackend, applying each request id at most once.

``ApplyOnce(LocalBackend(...))`` takes ``request_id=`` on every operation (see ``_requests``).
The first request with an id is submitted to the inner backend and its result recorded; a
repeat of the id gets that result (or that error) without reaching the inner backend again.
The record is bounded (the newest ``capacity`` requests): a repeat of a forgotten request that
depends on its place in the sequence raises RequestForgotten instead of applying it late, since
later requests were applied meanwhile; a forgotten position-independent read (sampling, a
delete, a sampler over saved weights) is simply run again.

Faults that model a lost connection belong *outside* this layer (``FaultyBackend(ApplyOnce(
backend))``): a request lost before it arrived was never recorded and is applied by its retry;
an answer lost after the request was applied is answered again from the record.

Results of the inner backend must be awaitable more than once (``BackendFuture``,
``DeferredResult``), as every Crucible backend's are.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Generic, TypeVar

import anyio
from tinker import types

from crucible.training.port._futures import DeferredResult
from crucible.training.port._operations import ORDERED_READS, STATE_OPERATIONS
from crucible.training.port._protocol import (
    SamplingClient,
    Tokenizer,
    TrainingBackend,
    loss_args,
)
from crucible.training.port._requests import RequestForgotten, RequestId, RequestIdReused

T = TypeVar("T")

#: Operations whose result depends on their place in the sequence: never applied late.
_ORDERED: Final = STATE_OPERATIONS | ORDERED_READS


class _Recorded(Generic[T]):
    """One request that reached the inner backend: its awaitable, then its outcome."""

    __slots__ = ("_error", "_value", "accepted", "awaitable", "done", "op", "submitted")

    def __init__(self, op: str) -> None:
        self.op = op
        self.submitted = anyio.Event()  # set once the inner backend accepted it (or refused)
        self.accepted = False
        self.awaitable: Awaitable[T] | None = None
        self.done = False  # the outcome below is known
        self._value: Any = None
        self._error: Exception | None = None

    async def result(self) -> T:
        if not self.done:
            assert self.awaitable is not None
            try:
                self._value = await self.awaitable
            except Exception as error:
                self._error = error
            self.done = True
            self.awaitable = None  # the outcome is kept; the inner future is not needed
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[no-any-return]


class RequestRecord:
    """The bounded record of recent requests, shared by a backend and its sampling clients."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the request record needs a capacity >= 1, got {capacity}")
        self.capacity = capacity
        self._requests: OrderedDict[RequestId, _Recorded[Any]] = OrderedDict()
        # The newest id of an ordered request the inner backend accepted.
        self._highest: RequestId | None = None

    def __len__(self) -> int:
        return len(self._requests)

    async def once(
        self,
        op: str,
        request_id: RequestId | None,
        ordered: bool,
        submit: Callable[[], Awaitable[Awaitable[T]]],
    ) -> Awaitable[T]:
        """Submit ``op`` unless ``request_id`` was seen; either way, its (recorded) result."""
        if request_id is None:
            return await submit()
        while (recorded := self._requests.get(request_id)) is not None:
            if recorded.op != op:
                raise RequestIdReused(
                    f"request id {request_id} was used for {recorded.op} and now for {op}"
                )
            await recorded.submitted.wait()
            if recorded.accepted:
                return DeferredResult(recorded.result)
            # The first submission of this id was refused (nothing applied): submit it now.
        if ordered and self._highest is not None and request_id <= self._highest:
            raise RequestForgotten(
                f"{op} request {request_id} is no longer on record (requests up to "
                f"{self._highest} were applied since); it cannot be answered without applying "
                "it out of order: restore the last checkpoint and replay"
            )
        recorded = _Recorded[T](op)
        self._requests[request_id] = recorded
        try:
            recorded.awaitable = await submit()
            recorded.accepted = True
        except BaseException:
            del self._requests[request_id]  # refused or never sent: a repeat may submit it
            raise
        finally:
            recorded.submitted.set()
        if ordered and (self._highest is None or request_id > self._highest):
            self._highest = request_id
        while len(self._requests) > self.capacity:
            self._requests.popitem(last=False)
        return DeferredResult(recorded.result)


class ApplyOnceSamplingClient:
    """A sampling client whose requests share its backend's record (see module doc)."""

    applies_once: Final = True

    def __init__(self, inner: SamplingClient, record: RequestRecord) -> None:
        self.inner = inner
        self._record = record

    async def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
        *,
        request_id: RequestId | None = None,
    ) -> Awaitable[types.SampleResponse]:
        return await self._record.once(
            "sample",
            request_id,
            False,
            lambda: self.inner.sample(prompt, num_samples, sampling_params),
        )

    async def compute_logprobs(
        self, prompt: types.ModelInput, *, request_id: RequestId | None = None
    ) -> Awaitable[list[float | None]]:
        return await self._record.once(
            "compute_logprobs", request_id, False, lambda: self.inner.compute_logprobs(prompt)
        )


class ApplyOnce:
    """``inner`` (any in-process TrainingBackend), applying each request id at most once and
    answering a repeat from a record of the newest ``capacity`` requests (see module doc)."""

    applies_once: Final = True

    def __init__(self, inner: TrainingBackend, *, capacity: int = 256) -> None:
        self.inner = inner
        self.record = RequestRecord(capacity)

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
        return await self.record.once(
            "forward_backward",
            request_id,
            True,
            lambda: self.inner.forward_backward(data, *loss_args(loss_fn, loss_fn_config)),
        )

    async def forward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        request_id: RequestId | None = None,
    ) -> Awaitable[types.ForwardBackwardOutput]:
        return await self.record.once(
            "forward",
            request_id,
            True,
            lambda: self.inner.forward(data, *loss_args(loss_fn, loss_fn_config)),
        )

    async def optim_step(
        self, adam_params: types.AdamParams, *, request_id: RequestId | None = None
    ) -> Awaitable[types.OptimStepResponse]:
        return await self.record.once(
            "optim_step", request_id, True, lambda: self.inner.optim_step(adam_params)
        )

    async def save_state(
        self, name: str, *, request_id: RequestId | None = None
    ) -> Awaitable[types.SaveWeightsResponse]:
        return await self.record.once(
            "save_state", request_id, True, lambda: self.inner.save_state(name)
        )

    async def load_state(
        self, path: str, with_optimizer: bool = True, *, request_id: RequestId | None = None
    ) -> Awaitable[types.LoadWeightsResponse]:
        return await self.record.once(
            "load_state", request_id, True, lambda: self.inner.load_state(path, with_optimizer)
        )

    async def save_weights_for_sampler(
        self, name: str, *, request_id: RequestId | None = None
    ) -> Awaitable[types.SaveWeightsForSamplerResponse]:
        return await self.record.once(
            "save_weights_for_sampler",
            request_id,
            True,
            lambda: self.inner.save_weights_for_sampler(name),
        )

    async def delete_checkpoint(
        self, path: str, *, request_id: RequestId | None = None
    ) -> Awaitable[None]:
        return await self.record.once(
            "delete_checkpoint", request_id, False, lambda: self.inner.delete_checkpoint(path)
        )

    async def sampling_client(
        self, path: str | None = None, *, request_id: RequestId | None = None
    ) -> Awaitable[SamplingClient]:
        # Without a path it snapshots the current weights: that depends on its place.
        inner = await self.record.once(
            "sampling_client",
            request_id,
            path is None,
            lambda: self.inner.sampling_client(path),
        )

        async def wrap() -> SamplingClient:
            return ApplyOnceSamplingClient(await inner, self.record)

        return DeferredResult(wrap)

    async def aclose(self) -> None:
        await self.inner.aclose()
