from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tinker import types

from crucible.training import (
    FAULT_KINDS,
    BackendCrashed,
    BackendOpFailed,
    FaultKind,
    FaultyBackend,
    LatencyDistribution,
    TrainingBackend,
)
from crucible.training.backends.local import LocalBackend, LocalBackendConfig

from .training_kit import ADAM, TINY_TASK, TOKENIZER, RecordingBackend

pytestmark = pytest.mark.anyio


async def run_steps(backend: TrainingBackend, steps: int) -> list[str]:
    """Train steps until the first failure; returns what happened to each op."""
    outcomes = []
    for _ in range(steps):
        for submit in (
            lambda: backend.forward_backward(TINY_TASK),
            lambda: backend.optim_step(ADAM),
        ):
            try:
                await (await submit())
                outcomes.append("ok")
            except BackendOpFailed:
                outcomes.append("failed")
            except BackendCrashed:
                outcomes.append("crashed")
                return outcomes
    return outcomes


def no_latency() -> LatencyDistribution:
    return LatencyDistribution(mean_s=0.0)


async def test_wraps_as_a_training_backend() -> None:
    faulty = FaultyBackend(RecordingBackend(), seed=0, rate=0.0)
    assert isinstance(faulty, TrainingBackend)
    assert faulty.tokenizer is TOKENIZER
    assert await run_steps(faulty, 3) == ["ok"] * 6
    assert faulty.injected == []


@given(
    seed=st.integers(0, 2**32),
    rate=st.floats(0.0, 1.0),
    kinds=st.sets(st.sampled_from([k for k in FAULT_KINDS if k != "hang"]), min_size=1),
)
@settings(max_examples=40, deadline=None)
def test_the_same_seed_gives_the_same_faults(seed: int, rate: float, kinds: set[FaultKind]) -> None:
    def run() -> tuple[list[object], list[str], list[str]]:
        inner = RecordingBackend()
        faulty = FaultyBackend(
            inner, seed=seed, rate=rate, kinds=sorted(kinds), latency=no_latency()
        )
        outcomes = anyio.run(run_steps, faulty, 10)
        return list(faulty.injected), outcomes, inner.applied

    assert run() == run()


async def test_different_seeds_give_different_schedules() -> None:
    schedules = set()
    for seed in range(5):
        faulty = FaultyBackend(RecordingBackend(), seed=seed, rate=0.3, kinds=["transient"])
        await run_steps(faulty, 20)
        schedules.add(tuple(f.call_index for f in faulty.injected))
    assert len(schedules) == 5


async def test_rate_bounds_the_share_of_faulted_calls() -> None:
    faulty = FaultyBackend(RecordingBackend(), seed=1, rate=0.2, kinds=["transient"])
    await run_steps(faulty, 500)
    assert 0.15 < len(faulty.injected) / 1000 < 0.25


async def test_transient_fails_before_applying() -> None:
    inner = RecordingBackend()
    faulty = FaultyBackend(inner, seed=0, rate=1.0, kinds=["transient"])
    with pytest.raises(BackendOpFailed, match="may or may not"):
        await faulty.optim_step(ADAM)
    assert inner.applied == []
    assert faulty.injected[0].kind == "transient"


async def test_applied_then_failed_applies_then_raises_the_same_error() -> None:
    inner = RecordingBackend()
    faulty = FaultyBackend(inner, seed=0, rate=1.0, kinds=["applied_then_failed"])
    result = await faulty.optim_step(ADAM)
    with pytest.raises(BackendOpFailed, match="may or may not"):
        await result
    assert inner.applied == ["optim_step"]


async def test_crash_makes_the_backend_unusable() -> None:
    inner = RecordingBackend()
    faulty = FaultyBackend(inner, seed=0, rate=1.0, kinds=["crash"])
    with pytest.raises(BackendCrashed):
        await faulty.forward_backward(TINY_TASK)
    assert faulty.crashed
    for submit in (lambda: faulty.optim_step(ADAM), lambda: faulty.save_state("x")):
        with pytest.raises(BackendCrashed, match="crashed earlier"):
            await submit()
    assert inner.applied == []


async def test_hang_never_answers_until_cancelled_and_wedges_the_backend() -> None:
    inner = RecordingBackend()
    faulty = FaultyBackend(inner, seed=0, rate=1.0, kinds=["hang"])
    hung = await faulty.optim_step(ADAM)
    with anyio.move_on_after(0.05) as scope:
        await hung
    assert scope.cancelled_caught
    later = await faulty.save_state("x")  # a wedged client: later ops hang too
    with anyio.move_on_after(0.01) as scope:
        await later
    assert scope.cancelled_caught
    assert inner.applied == []


async def test_latency_delays_then_applies() -> None:
    inner = RecordingBackend()
    faulty = FaultyBackend(
        inner, seed=0, rate=1.0, kinds=["latency"], latency=LatencyDistribution(0.001, 0.002)
    )
    await (await faulty.optim_step(ADAM))
    assert inner.applied == ["optim_step"]
    assert 0 < faulty.injected[0].delay_s <= 0.002


async def test_ops_filter_limits_faults_and_keeps_the_stream() -> None:
    inner = RecordingBackend()
    everything = FaultyBackend(RecordingBackend(), seed=4, rate=0.5, kinds=["transient"])
    only_optim = FaultyBackend(inner, seed=4, rate=0.5, kinds=["transient"], ops=["optim_step"])
    await run_steps(everything, 20)
    await run_steps(only_optim, 20)
    expected = [f for f in everything.injected if f.op == "optim_step"]
    assert only_optim.injected == expected
    assert inner.applied.count("forward_backward") == 20


async def test_sampling_clients_share_the_fault_stream() -> None:
    inner = RecordingBackend()
    faulty = FaultyBackend(inner, seed=0, rate=1.0, kinds=["applied_then_failed"], ops=["sample"])
    client = await (await faulty.sampling_client())
    prompt = types.ModelInput.from_ints([1])
    with pytest.raises(BackendOpFailed):
        await (await client.sample(prompt, 1, types.SamplingParams()))
    assert await (await client.compute_logprobs(prompt)) == [None]
    assert [f.op for f in faulty.injected] == ["sample"]


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="rate"):
        FaultyBackend(RecordingBackend(), seed=0, rate=1.5)
    with pytest.raises(ValueError, match="kinds"):
        FaultyBackend(RecordingBackend(), seed=0, rate=0.1, kinds=["gremlins"])  # type: ignore[list-item]


async def test_wraps_the_local_backend(make_config: Callable[..., LocalBackendConfig]) -> None:
    inner = LocalBackend(make_config())
    faulty = FaultyBackend(
        inner, seed=0, rate=1.0, kinds=["applied_then_failed"], ops=["optim_step"]
    )
    async with inner:
        await (await faulty.forward_backward(TINY_TASK))
        optim = await faulty.optim_step(ADAM)
        with pytest.raises(BackendOpFailed):
            await optim
        assert inner.step == 1  # applied, though the caller was told it failed


def test_fault_ops_must_be_backend_operations() -> None:
    with pytest.raises(ValueError, match="optim_stp"):
        FaultyBackend(RecordingBackend(), seed=0, rate=0.5, ops=["optim_stp"])
