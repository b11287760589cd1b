"""The pool's work, shared by every incarnation of every sampler actor: the published weights,
the accepted requests (each assigned to one sampler until it resolves), the in-flight bound,
the sampling clients per weights, and the counters.

It lives outside the actors (as the session's journal does) so that a sampler that dies loses
nothing: its next incarnation finds the requests still assigned to it and runs them again.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import anyio
import attrs
from tinker import types

from crucible.training.port import SamplingClient, TrainingBackend


class SamplerPoolError(Exception):
    """Base class of the sampler pool's own errors."""


class SamplerPoolFailed(SamplerPoolError):
    """The pool gave up (its samplers crashed more often than its restart intensity allows);
    names the last failure. Every pending and later request fails with it."""


class SamplerPoolClosed(SamplerPoolError):
    """The ``open_sampler_pool`` block has ended; the pool takes no more requests."""


class NoWeightsPublished(SamplerPoolError):
    """A request came before any weights were published: call ``publish(path)`` first."""


class WeightsVersionError(SamplerPoolError, ValueError):
    """``publish`` was given a version that is not newer than the current one."""


class SampleTimedOut(SamplerPoolError):
    """A sample did not finish within the pool's ``op_timeout`` (a wedged backend); the sampler
    that ran it restarts and runs it again."""


@attrs.frozen
class SamplerWeights:
    """Published sampler weights: ``path`` (from ``save_weights_for_sampler``) and its
    ``version``, which grows with every publish."""

    version: int
    path: str


@attrs.frozen
class PooledSample:
    """A finished request: the backend's response and the weights that produced it."""

    response: types.SampleResponse
    weights: SamplerWeights
    attempts: int  # 1 when the first attempt answered; more after retries or sampler restarts

    @property
    def version(self) -> int:
        return self.weights.version

    @property
    def sequences(self) -> Sequence[types.SampledSequence]:
        return self.response.sequences


class PendingSample:
    """One accepted request. Await it (any number of times) for its PooledSample; the pool
    resolves it exactly once, whichever sampler incarnation finishes it."""

    __slots__ = (
        "_done",
        "_error",
        "_result",
        "attempts",
        "id",
        "num_samples",
        "params",
        "prompt",
        "sampler",
        "weights",
    )

    def __init__(
        self,
        request_id: int,
        prompt: types.ModelInput,
        num_samples: int,
        params: types.SamplingParams,
        weights: SamplerWeights,
        sampler: int,
    ) -> None:
        self.id = request_id
        self.prompt = prompt
        self.num_samples = num_samples
        self.params = params
        self.weights = weights
        self.sampler = sampler  # the index of the sampler it is assigned to
        self.attempts = 0
        self._done = anyio.Event()
        self._result: PooledSample | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def result(self) -> PooledSample:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def __await__(self) -> Generator[Any, None, PooledSample]:
        return self.result().__await__()


@attrs.frozen
class SamplerPoolStats:
    """The pool's counters, for metrics. ``busy_seconds``: time during which at least one
    request was in flight; ``restarts``: sampler actors started again after a crash."""

    in_flight: int
    waiting: int
    submitted: int
    completed: int
    failed: int
    retried: int
    restarts: int
    busy_seconds: float
    version: int | None


class PoolWork:
    """See the module docstring. Single event loop: no locks needed around plain fields."""

    def __init__(self, backend: TrainingBackend, size: int, max_inflight: int) -> None:
        if size < 1:
            raise ValueError(f"a sampler pool needs size >= 1, got {size}")
        if max_inflight < 1:
            raise ValueError(f"a sampler pool needs max_inflight >= 1, got {max_inflight}")
        self.backend = backend
        self.max_inflight = max_inflight
        self.weights: SamplerWeights | None = None
        # Accepted, unresolved requests per sampler index, oldest first.
        self.assigned: list[dict[int, PendingSample]] = [{} for _ in range(size)]
        self._wakers = [anyio.Event() for _ in range(size)]
        self._slots = anyio.Semaphore(max_inflight)
        self._next_id = 0
        self._clients: dict[str, SamplingClient] = {}
        self._client_lock = anyio.Lock()
        self.failure: SamplerPoolError | None = None
        self.last_failure: str | None = None
        # counters
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self.starts = [0] * size
        self._busy_seconds = 0.0
        self._busy_since: float | None = None

    # -- accepting ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(len(requests) for requests in self.assigned)

    async def accept(
        self, prompt: types.ModelInput, num_samples: int, params: types.SamplingParams
    ) -> PendingSample:
        """Wait for room under the bound, then assign the request to the least loaded sampler,
        with the weights published at that moment."""
        self._check_open()
        await self._slots.acquire()
        try:
            self._check_open()  # the pool may have failed while this caller waited
        except SamplerPoolError:
            self._slots.release()
            raise
        assert self.weights is not None
        index = min(range(len(self.assigned)), key=lambda i: len(self.assigned[i]))
        request = PendingSample(self._next_id, prompt, num_samples, params, self.weights, index)
        self._next_id += 1
        self.submitted += 1
        if self.in_flight == 0:
            self._busy_since = anyio.current_time()
        self.assigned[index][request.id] = request
        self._wakers[index].set()
        return request

    def _check_open(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self.weights is None:
            raise NoWeightsPublished(
                "no sampler weights published yet: call pool.publish(path) with a path from "
                "save_weights_for_sampler first"
            )

    def publish(self, path: str, version: int | None) -> SamplerWeights:
        if self.failure is not None:
            raise self.failure
        if not isinstance(path, str) or not path:
            raise ValueError(f"publish needs a sampler weights path, got {path!r}")
        current = self.weights.version if self.weights is not None else 0
        if version is None:
            version = current + 1
        elif version <= current and self.weights is not None:
            raise WeightsVersionError(
                f"weights version {version} is not newer than the published version {current}"
            )
        self.weights = SamplerWeights(version, path)
        return self.weights

    # -- what a sampler incarnation sees -----------------------------------------------------

    def waker(self, index: int) -> anyio.Event:
        """A fresh event that the next request assigned to sampler ``index`` sets (take it
        before scanning ``assigned[index]``, so no request is missed)."""
        self._wakers[index] = anyio.Event()
        return self._wakers[index]

    async def client(self, path: str) -> SamplingClient:
        """The shared sampling client over ``path`` (one per weights, so a backend that batches
        the requests of one client, as the local one does, batches across samplers)."""
        async with self._client_lock:
            client = self._clients.get(path)
            if client is None:
                client = await (await self.backend.sampling_client(path))
                self._clients[path] = client
                self._forget_unused_clients()
            return client

    def discard_client(self, path: str, client: SamplingClient) -> None:
        """Stop sharing ``client`` (it failed in a way a fresh client may not): the next request
        on ``path`` builds a new one."""
        if self._clients.get(path) is client:
            del self._clients[path]

    def _forget_unused_clients(self) -> None:
        in_use = {r.weights.path for requests in self.assigned for r in requests.values()}
        if self.weights is not None:
            in_use.add(self.weights.path)
        for path in [p for p in self._clients if p not in in_use]:
            del self._clients[path]

    # -- resolving ---------------------------------------------------------------------------

    def resolve(self, request: PendingSample, response: types.SampleResponse) -> None:
        if self._finish(request):
            request._result = PooledSample(response, request.weights, request.attempts)
            self.completed += 1
            request._done.set()

    def fail(self, request: PendingSample, error: BaseException) -> None:
        if self._finish(request):
            request._error = error
            self.failed += 1
            request._done.set()

    def _finish(self, request: PendingSample) -> bool:
        """Take ``request`` off its sampler and free its slot; False if it was resolved."""
        if self.assigned[request.sampler].pop(request.id, None) is None:
            return False
        self._slots.release()
        if self.in_flight == 0 and self._busy_since is not None:
            self._busy_seconds += anyio.current_time() - self._busy_since
            self._busy_since = None
        return True

    def give_up(self, error: SamplerPoolError) -> None:
        """Fail every pending request and every later one (and wake callers waiting for room)
        with ``error``."""
        if self.failure is None:
            self.failure = error
        for requests in self.assigned:
            for request in list(requests.values()):
                self.fail(request, self.failure)
        for _ in range(self._slots.statistics().tasks_waiting):
            self._slots.release()

    # -- counters ----------------------------------------------------------------------------

    def stats(self) -> SamplerPoolStats:
        busy = self._busy_seconds
        if self._busy_since is not None:
            busy += anyio.current_time() - self._busy_since
        return SamplerPoolStats(
            in_flight=self.in_flight,
            waiting=self._slots.statistics().tasks_waiting,
            submitted=self.submitted,
            completed=self.completed,
            failed=self.failed,
            retried=self.retried,
            restarts=sum(max(starts - 1, 0) for starts in self.starts),
            busy_seconds=busy,
            version=None if self.weights is None else self.weights.version,
        )
