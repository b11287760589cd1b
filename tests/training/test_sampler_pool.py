"""The sampler pool: bounded in-flight work, retries in place, sampler crashes that lose no
request, weights published mid-run, and giving up past the restart intensity.

Where the behaviour is the pool's own, a fake backend answers: its samples encode the weights
path, the prompt and the seed, so a test can tell which weights served a request, and it
counts the requests in flight at the backend. The fault-free/faulty comparison runs the local
backend on the tiny model."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tinker import types

from crucible.actors import Backoff, open_runtime
from crucible.training import FaultyBackend, InvalidDatum, open_training
from crucible.training.backends.local import LocalBackend, LocalBackendConfig
from crucible.training.port import BackendCrashed, BackendOpFailed, DeferredResult
from crucible.training.sampling import (
    NoWeightsPublished,
    PendingSample,
    SamplerPoolClosed,
    SamplerPoolFailed,
    WeightsVersionError,
    open_sampler_pool,
)
from crucible.training.session import SessionRetry

from .training_kit import TOKENIZER

pytestmark = pytest.mark.anyio

NO_WAIT = SessionRetry(max_retries=3, backoff=Backoff.none())
PARAMS = types.SamplingParams(max_tokens=4, seed=11)


def prompt(n: int) -> types.ModelInput:
    return types.ModelInput.from_ints([n])


def weights_number(path: str) -> int:
    return int(path.rsplit("/", 1)[-1])


HANG = Exception("never answers")  # a fault: the attempt's result never comes


class FakeSampling:
    """A backend with sampling only. ``sample`` answers ``[weights, prompt..., seed]``, after
    ``gate`` opens (when one is set). ``faults[prompt]`` lists errors that the next attempts
    on that prompt raise, one each, before the gate."""

    def __init__(self) -> None:
        self.gate: anyio.Event | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: defaultdict[int, int] = defaultdict(int)  # sample calls per prompt
        self.clients = 0
        self.faults: dict[int, list[BaseException]] = {}

    async def sampling_client(self, path: str | None = None) -> DeferredResult[Any]:
        assert path is not None
        self.clients += 1
        client = FakeSamplingClient(self, weights_number(path))

        async def ready() -> FakeSamplingClient:
            return client

        return DeferredResult(ready)


class FakeSamplingClient:
    def __init__(self, backend: FakeSampling, weights: int) -> None:
        self.backend = backend
        self.weights = weights

    async def sample(
        self, prompt: types.ModelInput, num_samples: int, params: types.SamplingParams
    ) -> DeferredResult[types.SampleResponse]:
        backend = self.backend
        key = prompt.to_ints()[0]
        backend.calls[key] += 1
        backend.in_flight += 1
        backend.max_in_flight = max(backend.max_in_flight, backend.in_flight)
        faults = backend.faults.get(key)
        fault = faults.pop(0) if faults else None

        async def answer() -> types.SampleResponse:
            try:
                if fault is HANG:
                    await anyio.sleep_forever()
                if fault is not None:
                    raise fault
                if backend.gate is not None:
                    await backend.gate.wait()
                tokens = [self.weights, *prompt.to_ints(), params.seed or 0]
                sequence = types.SampledSequence(
                    stop_reason="length",
                    sequence_id="fake",
                    tokens_np=np.asarray(tokens, dtype=np.int32),
                    logprobs_np=np.zeros(len(tokens), dtype=np.float32),
                )
                return types.SampleResponse(sequences=[sequence] * num_samples)
            finally:
                backend.in_flight -= 1

        return DeferredResult(answer)


def served_by(sample: Any) -> int:
    """The weights number the fake encoded in the first token of its answer."""
    return int(sample.sequences[0].tokens[0])


# -- back-pressure ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3])
async def test_callers_past_the_bound_wait_and_the_bound_is_never_exceeded(size: int) -> None:
    fake = FakeSampling()
    fake.gate = anyio.Event()
    results: list[Any] = []
    async with open_sampler_pool(fake, size=size, max_inflight=4, weights="fake://1") as pool:  # type: ignore[arg-type]

        async def caller(n: int) -> None:
            results.append(await pool.sample(prompt(n), 2, PARAMS))

        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(caller, n)
            await anyio.wait_all_tasks_blocked()
            stats = pool.stats()
            assert (fake.in_flight, stats.in_flight, stats.waiting) == (4, 4, 6)
            fake.gate.set()
        stats = pool.stats()
    assert fake.max_in_flight == 4  # reached, never exceeded
    assert sorted(int(r.sequences[0].tokens[1]) for r in results) == list(range(10))
    assert all(len(r.sequences) == 2 and r.version == 1 for r in results)
    assert (stats.submitted, stats.completed, stats.in_flight, stats.waiting) == (10, 10, 0, 0)
    assert stats.busy_seconds >= 0


# -- retries in place -------------------------------------------------------------------------


async def test_a_failed_sample_is_retried_in_place() -> None:
    fake = FakeSampling()
    fake.faults[5] = [BackendOpFailed("lost"), BackendOpFailed("lost again")]
    async with open_sampler_pool(fake, weights="fake://1", retry=NO_WAIT) as pool:  # type: ignore[arg-type]
        result = await pool.sample(prompt(5), 1, PARAMS)
        stats = pool.stats()
    assert result.sequences[0].tokens == [1, 5, 11]
    assert result.attempts == 3 and fake.calls[5] == 3
    assert (stats.retried, stats.restarts, stats.failed) == (2, 0, 0)


async def test_retries_with_faults_give_the_tokens_of_a_fault_free_run(
    make_config: Callable[..., LocalBackendConfig],
) -> None:
    params = types.SamplingParams(max_tokens=6, temperature=1.0, seed=3, stop=[])
    prompts = [
        types.ModelInput.from_ints([TOKENIZER.bos_token_id, *TOKENIZER.encode(f"{a} + {a} =")])
        for a in range(10, 16)
    ]
    async with LocalBackend(make_config()) as local:
        saved = await (await local.save_weights_for_sampler("pool"))
        faulty = FaultyBackend(
            local, seed=2, rate=0.5, kinds=("transient", "applied_then_failed"), ops=["sample"]
        )
        runs = []
        for backend in (local, faulty):
            async with open_sampler_pool(
                backend, size=2, max_inflight=3, weights=saved.path, retry=NO_WAIT
            ) as pool:
                pending = [await pool.submit(p, 2, params) for p in prompts]
                runs.append(
                    ([s.tokens for r in pending for s in (await r).sequences], pool.stats())
                )
        direct = await (await local.sampling_client(saved.path))
        expected = [
            s.tokens for p in prompts for s in (await (await direct.sample(p, 2, params))).sequences
        ]
    (clean, clean_stats), (retried, retried_stats) = runs
    assert clean == retried == expected
    assert clean_stats.retried == 0
    assert len(faulty.injected) > 0
    assert retried_stats.retried == len(faulty.injected)
    assert retried_stats.restarts == 0


async def test_the_training_sessions_client_serves_as_the_pools_backend(
    make_config: Callable[..., LocalBackendConfig], tmp_path: Path
) -> None:
    """The RL shape: the trainer saves sampler weights through the session and publishes them;
    the pool samples through the same session (which survives backend restarts itself)."""
    params = types.SamplingParams(max_tokens=4, seed=5, stop=[])
    p = types.ModelInput.from_ints([TOKENIZER.bos_token_id, *TOKENIZER.encode("12 + 12 =")])
    async with (
        open_runtime() as runtime,
        open_training(runtime, lambda n: LocalBackend(make_config()), tmp_path) as tree,
        open_sampler_pool(tree.session, runtime=runtime, size=2, max_inflight=2) as pool,
    ):
        saved = await (await tree.session.save_weights_for_sampler("s0"))
        await pool.publish(saved.path)
        pooled = await pool.sample(p, 2, params)
        direct = await (await tree.session.sampling_client(saved.path))
        expected = await (await direct.sample(p, 2, params))
    assert [s.tokens for s in pooled.sequences] == [s.tokens for s in expected.sequences]
    assert pooled.weights.path == saved.path and pooled.version == 1


async def test_a_rejected_request_fails_its_caller_and_the_pool_goes_on() -> None:
    fake = FakeSampling()
    fake.faults[7] = [InvalidDatum("prompt too long")]
    async with open_sampler_pool(fake, weights="fake://1", retry=NO_WAIT) as pool:  # type: ignore[arg-type]
        with pytest.raises(InvalidDatum, match="too long"):
            await pool.sample(prompt(7), 1, PARAMS)
        assert served_by(await pool.sample(prompt(8), 1, PARAMS)) == 1
        stats = pool.stats()
    assert (stats.failed, stats.completed, stats.retried, stats.restarts) == (1, 1, 0, 0)
    assert fake.calls[7] == 1


# -- crashes ----------------------------------------------------------------------------------


async def test_a_crashed_sampler_is_restarted_and_its_requests_run_again() -> None:
    fake = FakeSampling()
    fake.gate = anyio.Event()
    # One sampler, so the requests in flight beside the one that crashes are its own.
    async with open_sampler_pool(
        fake,  # type: ignore[arg-type]
        size=1,
        weights="fake://1",
        retry=NO_WAIT,
        backoff=Backoff.none(),
    ) as pool:
        waiting = [await pool.submit(prompt(n), 1, PARAMS) for n in range(3)]
        await anyio.wait_all_tasks_blocked()
        assert fake.in_flight == 3
        fake.faults[9] = [BackendCrashed("the sampler's backend died")]
        crashing = await pool.submit(prompt(9), 1, PARAMS)
        await anyio.wait_all_tasks_blocked()  # crashed and restarted: all 4 sent again
        fake.gate.set()
        results = [await r for r in [*waiting, crashing]]
        stats = pool.stats()
    assert [r.sequences[0].tokens for r in results] == [[1, n, 11] for n in (0, 1, 2, 9)]
    assert stats.restarts == 1
    assert [r.attempts for r in results] == [2, 2, 2, 2]
    assert dict(fake.calls) == {0: 2, 1: 2, 2: 2, 9: 2}
    assert fake.clients == 2  # the restarted sampler did not reuse the failed client
    assert (stats.completed, stats.failed) == (4, 0)


async def test_retries_used_up_restart_the_sampler_then_the_request_succeeds() -> None:
    fake = FakeSampling()
    fake.faults[4] = [BackendOpFailed("lost")] * 3
    retry = SessionRetry(max_retries=2, backoff=Backoff.none())  # 2 retries, then a restart
    async with open_sampler_pool(fake, weights="fake://1", retry=retry) as pool:  # type: ignore[arg-type]
        result = await pool.sample(prompt(4), 1, PARAMS)
        stats = pool.stats()
    assert result.attempts == 4
    assert (stats.retried, stats.restarts) == (2, 1)


async def test_a_hung_sample_restarts_its_sampler_and_runs_again() -> None:
    fake = FakeSampling()
    fake.faults[3] = [HANG]
    async with open_sampler_pool(
        fake,  # type: ignore[arg-type]
        size=1,
        weights="fake://1",
        op_timeout=0.05,  # the hang is detected by this timeout, nothing else
        backoff=Backoff.none(),
    ) as pool:
        result = await pool.sample(prompt(3), 1, PARAMS)
        stats = pool.stats()
    assert result.sequences[0].tokens == [1, 3, 11] and result.attempts == 2
    assert (stats.restarts, fake.in_flight) == (1, 0)


async def test_the_pool_gives_up_past_its_restart_intensity() -> None:
    fake = FakeSampling()
    fake.faults[1] = [BackendCrashed(f"crash {i}") for i in range(10)]
    async with open_runtime() as runtime:
        async with open_sampler_pool(
            fake,  # type: ignore[arg-type]
            runtime=runtime,
            size=1,
            weights="fake://1",
            max_restarts=2,
            backoff=Backoff.none(),
        ) as pool:
            with pytest.raises(SamplerPoolFailed, match=r"last failure: .*BackendCrashed: crash 2"):
                await pool.sample(prompt(1), 1, PARAMS)
            with pytest.raises(SamplerPoolFailed):
                await pool.submit(prompt(2), 1, PARAMS)
            assert fake.calls[1] == 3
        with pytest.raises(SamplerPoolFailed):  # still the reason, after the block
            await pool.submit(prompt(2), 1, PARAMS)


# -- weights ----------------------------------------------------------------------------------


async def test_publish_switches_later_requests_and_in_flight_ones_keep_their_weights() -> None:
    fake = FakeSampling()
    fake.gate = anyio.Event()
    async with open_sampler_pool(fake, size=2) as pool:  # type: ignore[arg-type]
        with pytest.raises(NoWeightsPublished):
            await pool.submit(prompt(0), 1, PARAMS)
        assert (await pool.publish("fake://3")).version == 1
        before = await pool.submit(prompt(0), 1, PARAMS)
        await anyio.wait_all_tasks_blocked()
        assert fake.in_flight == 1  # on its way, on weights 3
        published = await pool.publish("fake://4")
        after = await pool.submit(prompt(1), 1, PARAMS)
        fake.gate.set()
        old, new = await before, await after
        assert (old.version, served_by(old), new.version, served_by(new)) == (1, 3, 2, 4)
        assert new.weights == published and pool.weights == published
        assert (await pool.publish("fake://9", version=10)).version == 10
        with pytest.raises(WeightsVersionError, match="not newer"):
            await pool.publish("fake://10", version=10)
        with pytest.raises(ValueError, match="num_samples"):
            await pool.submit(prompt(0), 0, PARAMS)
        assert pool.stats().version == 10


async def test_requests_left_when_the_block_ends_fail_as_closed() -> None:
    fake = FakeSampling()
    fake.gate = anyio.Event()
    async with open_sampler_pool(fake, weights="fake://1") as pool:  # type: ignore[arg-type]
        left = await pool.submit(prompt(0), 1, PARAMS)
    with pytest.raises(SamplerPoolClosed):
        await left
    with pytest.raises(SamplerPoolClosed):
        await pool.submit(prompt(0), 1, PARAMS)


# -- any interleaving -------------------------------------------------------------------------

STEP = st.one_of(
    st.just(("publish", 0)),
    st.tuples(st.just("submit"), st.integers(0, 2)),  # with that many failures first
    st.just(("crash", 0)),  # submit a request whose first attempt crashes its sampler
    st.just(("await", 0)),  # wait for the oldest pending request
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(STEP, max_size=25), size=st.integers(1, 3), bound=st.integers(1, 4))
async def test_any_interleaving_resolves_every_request_once_on_fresh_enough_weights(
    steps: list[tuple[str, int]], size: int, bound: int
) -> None:
    fake = FakeSampling()
    published = 1
    submitted: list[tuple[PendingSample, int, int]] = []  # request, prompt, version before
    async with open_sampler_pool(
        fake,  # type: ignore[arg-type]
        size=size,
        max_inflight=bound,
        weights="fake://1",
        retry=NO_WAIT,
        backoff=Backoff.none(),
        max_restarts=len(steps),  # every "crash" step restarts a sampler once
    ) as pool:
        unawaited: list[PendingSample] = []
        for n, (kind, failures) in enumerate(steps):
            if kind == "publish":
                published += 1
                await pool.publish(f"fake://{published}")
            elif kind == "await":
                if unawaited:
                    await unawaited.pop(0)
            else:
                faults: list[BaseException] = [BackendOpFailed("lost")] * failures
                fake.faults[n] = [BackendCrashed("boom")] if kind == "crash" else faults
                request = await pool.submit(prompt(n), 1, PARAMS)
                submitted.append((request, n, published))
                unawaited.append(request)
        results = [await request for request, _, _ in submitted]
        stats = pool.stats()
    for (request, n, version_before), result in zip(submitted, results, strict=True):
        assert result.version >= version_before
        assert served_by(result) == result.version  # tagged with the weights that served it
        assert result.sequences[0].tokens[1] == n
        assert request.done and await request is result  # resolved once, stays resolved
    assert (stats.submitted, stats.completed, stats.failed) == (len(submitted),) * 2 + (0,)
    assert fake.max_in_flight <= bound
