"""``open_sampler_pool``: sampler actors under a supervisor, and the client the trainer uses.

    Supervisor('sampler_pool')  one_for_one
    ├── sampler.0   Sampler   sampler_pool.sampler.0
    └── ...

Requests wait for room under ``max_inflight`` (back-pressure: a caller past the bound waits,
nothing queues without limit), go to the least loaded sampler, and use the weights published
when the pool accepted them. See docs/training.md ("The sampler pool").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from tinker import types

from crucible.actors import (
    Backoff,
    ChildSpec,
    Runtime,
    RuntimeEvent,
    SupervisorRef,
    open_runtime,
)
from crucible.training.port import TrainingBackend
from crucible.training.sampling._sampler import Sampler
from crucible.training.sampling._work import (
    PendingSample,
    PooledSample,
    PoolWork,
    SamplerPoolClosed,
    SamplerPoolFailed,
    SamplerPoolStats,
    SamplerWeights,
)
from crucible.training.session import SessionRetry


class SamplerPool:
    """The handle ``open_sampler_pool`` yields. Safe to use from many tasks."""

    def __init__(self, work: PoolWork, supervisor: SupervisorRef) -> None:
        self._work = work
        self.supervisor = supervisor

    @property
    def weights(self) -> SamplerWeights | None:
        """The weights that requests accepted from now on use (None before any publish)."""
        return self._work.weights

    async def publish(self, path: str, *, version: int | None = None) -> SamplerWeights:
        """Sample from the sampler weights at ``path`` (``save_weights_for_sampler``'s path)
        from now on, as ``version`` (default: the current version + 1; it must grow).

        Requests accepted before this keep their weights: those in flight finish on them and
        are tagged with their version. A path the backend cannot load fails the requests that
        use it with the backend's error (e.g. CheckpointNotFound), not the pool."""
        return self._work.publish(path, version)

    async def submit(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
    ) -> PendingSample:
        """Hand a request to the pool, waiting while ``max_inflight`` requests are in flight;
        await the returned PendingSample for its PooledSample. Cancelling that wait leaves the
        request running (it keeps its slot until it finishes)."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        return await self._work.accept(prompt, num_samples, sampling_params)

    async def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
    ) -> PooledSample:
        """``submit`` and wait for the result: the samples and the weights that made them."""
        return await (await self.submit(prompt, num_samples, sampling_params))

    def stats(self) -> SamplerPoolStats:
        """The counters now (in flight, waiting, retried, restarts, busy time, ...)."""
        return self._work.stats()


@asynccontextmanager
async def open_sampler_pool(
    backend: TrainingBackend,
    *,
    size: int = 2,
    max_inflight: int = 64,
    weights: str | None = None,
    runtime: Runtime | None = None,
    name: str = "sampler_pool",
    retry: SessionRetry | None = None,
    op_timeout: float = 120.0,
    max_restarts: int = 10,
    max_seconds: float = 60.0,
    backoff: Backoff | None = None,
) -> AsyncIterator[SamplerPool]:
    """Start ``size`` sampler actors over ``backend`` (whose ``sampling_client(path)`` they
    use) under a supervisor in ``runtime`` (a runtime of its own when None); leaving the block
    stops them and fails the requests still pending with SamplerPoolClosed.

    ``weights``: a sampler weights path to publish as version 1 at once. ``retry``: how a
    failed sample is retried in place (SessionRetry's defaults); ``op_timeout``: seconds after
    which a sample counts as hung (its sampler restarts). More than ``max_restarts`` sampler
    restarts within ``max_seconds`` and the pool gives up: every pending and later request
    fails with SamplerPoolFailed, naming the last failure.
    """
    work = PoolWork(backend, size, max_inflight)
    if weights is not None:
        work.publish(weights, None)
    retry = retry if retry is not None else SessionRetry()
    async with AsyncExitStack() as stack:
        if runtime is None:
            runtime = await stack.enter_async_context(open_runtime())
        supervisor_label = f"Supervisor({name!r})"

        def on_runtime_event(event: RuntimeEvent) -> None:
            if event.kind == "escalated" and event.actor == supervisor_label:
                work.give_up(
                    SamplerPoolFailed(
                        f"the sampler pool gave up after more than {max_restarts} sampler "
                        f"restarts within {max_seconds}s; last failure: {work.last_failure}"
                    )
                )

        runtime.add_listener(on_runtime_event)
        stack.callback(runtime.remove_listener, on_runtime_event)

        def sampler(index: int) -> ChildSpec:
            return ChildSpec(
                f"sampler.{index}",
                lambda: Sampler(work, index, retry=retry, op_timeout=op_timeout),
                name=f"{name}.sampler.{index}",
                shutdown=1.0,
            )

        supervisor = await runtime.supervise(
            [sampler(index) for index in range(size)],
            strategy="one_for_one",
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            backoff=backoff or Backoff(initial=0.01, maximum=1.0),
            name=name,
        )
        try:
            yield SamplerPool(work, supervisor)
        finally:
            work.give_up(SamplerPoolClosed("the sampler pool is closed"))
            if supervisor.ref.alive:
                with anyio.CancelScope(shield=True):  # samplers stop within 1 s each
                    await supervisor.stop()
