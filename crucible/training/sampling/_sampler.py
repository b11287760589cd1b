"""The Sampler actor: runs the requests the pool assigned to it, each in a task of its own.

A failed sample is retried in place (sampling from saved weights does not depend on when or
where it runs: with a seed in its SamplingParams a retry gives the same tokens). A failure
that a retry cannot fix (the backend crashed, a sample hung past ``op_timeout``, retries used
up) crashes the actor; its supervisor starts a new incarnation, which runs again every request
still assigned to it, so callers never lose a request to a crash.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from crucible.actors import Actor, ExitReason
from crucible.telemetry import execute
from crucible.training.port import REJECTED, BackendOpFailed, retries_itself
from crucible.training.sampling._work import PendingSample, PoolWork, SampleTimedOut
from crucible.training.session import SessionRetry

log = logging.getLogger("crucible.training")


class Sampler(Actor[None]):
    """Sampler ``index`` of a pool (see module doc)."""

    def __init__(self, work: PoolWork, index: int, *, retry: SessionRetry, op_timeout: float):
        self.work = work
        self.index = index
        self.retry = retry
        self.op_timeout = op_timeout
        self._started: set[int] = set()  # requests this incarnation has taken

    async def init(self) -> None:
        incarnation = self.work.starts[self.index]
        self.work.starts[self.index] += 1
        self._rng = self.retry.rng(incarnation)
        self.start_soon(self._run)

    async def terminate(self, reason: ExitReason, state: None) -> None:
        if reason.kind == "crashed":
            error = reason.error
            self.work.last_failure = f"sampler {self.index}: {type(error).__name__}: {error}"

    async def _run(self) -> None:
        """Take every request assigned to this sampler, now and as they come."""
        async with anyio.create_task_group() as tasks:
            while True:
                woken = self.work.waker(self.index)
                for request in list(self.work.assigned[self.index].values()):
                    if request.id not in self._started:
                        self._started.add(request.id)
                        tasks.start_soon(self._serve, request)
                await woken.wait()

    async def _serve(self, request: PendingSample) -> None:
        work = self.work
        retries = 0
        while not request.done:
            request.attempts += 1
            client: Any = None
            try:
                with anyio.fail_after(self.op_timeout):
                    client = await work.client(request.weights.path)
                    future = await client.sample(
                        request.prompt, request.num_samples, request.params
                    )
                    response = await future
            except REJECTED as error:  # the request itself is bad: nothing to retry
                work.fail(request, error)
            except BackendOpFailed as error:
                if retries_itself(work.backend):  # the backend's client retried it already
                    work.fail(request, error)
                elif retries >= self.retry.max_retries:
                    self._lose(request, client, error)
                    return
                else:
                    await self._before_retry(request, retries, error)
                    retries += 1
            except TimeoutError:
                timed_out = SampleTimedOut(
                    f"sample request {request.id} did not finish within {self.op_timeout}s "
                    "(backend wedged?)"
                )
                self._lose(request, client, timed_out)
                return
            except Exception as error:
                self._lose(request, client, error)
                return
            else:
                work.resolve(request, response)

    async def _before_retry(self, request: PendingSample, retries: int, error: Exception) -> None:
        delay = self.retry.backoff.delay(retries, self._rng)
        self.work.retried += 1
        execute(
            "crucible.sampler_pool.retry",
            {"attempt": retries + 1, "delay_s": delay},
            {"sampler": self.index, "request_id": request.id, "error": str(error)},
        )
        await anyio.sleep(delay)

    def _lose(self, request: PendingSample, client: Any, error: BaseException) -> None:
        """This incarnation cannot finish ``request``: crash, so that a new one (with a fresh
        sampling client) runs it again."""
        if client is not None:
            self.work.discard_client(request.weights.path, client)
        log.warning("sampler %d lost request %d: %r", self.index, request.id, error)
        self.crash(error)
