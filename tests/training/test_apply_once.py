"""ApplyOnce: each request id is applied at most once; a repeat gets the stored result."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tinker import types

from crucible.training import BackendOpFailed, FaultyBackend, InvalidDatum, TrainingBackend
from crucible.training.backends.local import LocalBackend, LocalBackendConfig
from crucible.training.port import (
    ApplyOnce,
    DeferredResult,
    RequestForgotten,
    RequestIdReused,
    applies_once,
)

from .training_kit import ADAM, TINY_TASK, RecordingBackend

pytestmark = pytest.mark.anyio


class CountingBackend(RecordingBackend):
    """Answers each op with how many ops were applied before it (so answers tell apart)."""

    async def optim_step(
        self, adam_params: types.AdamParams
    ) -> DeferredResult[types.OptimStepResponse]:
        count = float(len(self.applied))
        return self._apply("optim_step", types.OptimStepResponse(metrics={"applied:sum": count}))


class RefusingBackend(RecordingBackend):
    """Refuses the first ``refusals`` submissions of forward_backward (nothing applied)."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    async def forward_backward(
        self, data: object, loss_fn: str = "cross_entropy"
    ) -> DeferredResult[types.ForwardBackwardOutput]:
        if self.refusals > 0:
            self.refusals -= 1
            raise InvalidDatum("refused before anything was applied")
        return await super().forward_backward(TINY_TASK, loss_fn)


async def test_a_repeated_id_is_answered_from_the_record() -> None:
    inner = CountingBackend()
    backend = ApplyOnce(inner)
    first = await (await backend.optim_step(ADAM, request_id=1))
    again = await (await backend.optim_step(ADAM, request_id=1))
    assert inner.applied == ["optim_step"]
    assert again == first
    third = await (await backend.optim_step(ADAM, request_id=2))
    assert inner.applied == ["optim_step", "optim_step"]
    assert third.metrics == {"applied:sum": 1.0}


async def test_without_an_id_every_call_is_applied() -> None:
    inner = RecordingBackend()
    backend = ApplyOnce(inner)
    for _ in range(3):
        await (await backend.optim_step(ADAM))
    assert inner.applied == ["optim_step"] * 3


async def test_a_refused_request_is_not_recorded_and_its_repeat_is_applied() -> None:
    inner = RefusingBackend(refusals=1)
    backend = ApplyOnce(inner)
    with pytest.raises(InvalidDatum):
        await backend.forward_backward(TINY_TASK, request_id=5)
    await (await backend.forward_backward(TINY_TASK, request_id=5))
    await (await backend.forward_backward(TINY_TASK, request_id=5))
    assert inner.applied == ["forward_backward"]


async def test_an_id_reused_for_another_operation_is_refused() -> None:
    backend = ApplyOnce(RecordingBackend())
    await backend.optim_step(ADAM, request_id=3)
    with pytest.raises(RequestIdReused, match="optim_step and now for save_state"):
        await backend.save_state("x", request_id=3)


async def test_a_forgotten_ordered_request_is_refused_never_applied_late() -> None:
    inner = RecordingBackend()
    backend = ApplyOnce(inner, capacity=2)
    for request_id in range(4):
        await (await backend.optim_step(ADAM, request_id=request_id))
    assert len(backend.record) == 2
    with pytest.raises(RequestForgotten, match="request 0"):
        await backend.optim_step(ADAM, request_id=0)
    assert inner.applied == ["optim_step"] * 4
    await (await backend.optim_step(ADAM, request_id=3))  # still on record
    assert inner.applied == ["optim_step"] * 4


async def test_a_forgotten_read_is_simply_run_again() -> None:
    inner = RecordingBackend()
    backend = ApplyOnce(inner, capacity=1)
    await (await backend.delete_checkpoint("fake://a", request_id=0))
    await (await backend.optim_step(ADAM, request_id=1))
    await (await backend.delete_checkpoint("fake://a", request_id=0))
    assert inner.applied == ["delete_checkpoint", "optim_step", "delete_checkpoint"]


async def test_sampling_clients_share_the_record() -> None:
    inner = RecordingBackend()
    backend = ApplyOnce(inner)
    sampler = await (await backend.sampling_client("fake://s"))
    prompt = types.ModelInput.from_ints([1])
    for _ in range(2):
        await (await sampler.sample(prompt, 1, types.SamplingParams(), request_id=9))  # type: ignore[call-arg]
    assert inner.applied == ["sampling_client", "sample"]
    assert applies_once(sampler)


async def test_faults_outside_the_record_never_apply_twice() -> None:
    """An "applied then failed" answer is lost after the op was applied: its retry, with the
    same id, is answered from the record."""
    inner = CountingBackend()
    faulty = FaultyBackend(
        ApplyOnce(inner), seed=0, rate=1.0, kinds=["applied_then_failed"], ops=["optim_step"]
    )
    assert applies_once(faulty)
    with pytest.raises(BackendOpFailed):
        await (await faulty.optim_step(ADAM, request_id=0))
    healed = FaultyBackend(faulty.inner, seed=0, rate=0.0)  # the connection is back
    answer = await (await healed.optim_step(ADAM, request_id=0))
    assert inner.applied == ["optim_step"]
    assert answer.metrics == {"applied:sum": 0.0}


@given(
    plan=st.lists(st.tuples(st.integers(0, 12), st.booleans()), min_size=1, max_size=40),
    capacity=st.integers(1, 8),
)
@settings(max_examples=60, deadline=None)
def test_any_schedule_of_repeats_applies_each_id_at_most_once_in_order(
    plan: list[tuple[int, bool]], capacity: int
) -> None:
    """Requests come with growing ids, each possibly repeated later: every id is applied at
    most once, in id order, and every answer is the answer of the first application."""
    import anyio

    async def run() -> None:
        inner = CountingBackend()
        backend = ApplyOnce(inner, capacity=capacity)
        answers: dict[int, float] = {}
        next_id = 0
        for back, repeat in plan:
            if repeat and answers:
                request_id = max(0, next_id - 1 - back)
            else:
                request_id, next_id = next_id, next_id + 1
            try:
                answer = await (await backend.optim_step(ADAM, request_id=request_id))
            except RequestForgotten:
                assert request_id in answers  # only a repeat can be forgotten
                continue
            value = (answer.metrics or {})["applied:sum"]
            assert answers.setdefault(request_id, value) == value
        assert len(inner.applied) == len(answers) == next_id
        assert sorted(answers, key=answers.__getitem__) == sorted(answers)

    anyio.run(run)


async def test_the_local_backend_applies_a_repeated_step_once(
    make_config: Callable[..., LocalBackendConfig],
) -> None:
    local = LocalBackend(make_config())
    reference = LocalBackend(make_config(run_id="reference"))
    backend = ApplyOnce(local)
    assert isinstance(backend, TrainingBackend)
    async with local, reference:
        fb = await (await backend.forward_backward(TINY_TASK, request_id=0))
        assert await (await backend.forward_backward(TINY_TASK, request_id=0)) == fb
        step = await (await backend.optim_step(ADAM, request_id=1))
        assert await (await backend.optim_step(ADAM, request_id=1)) == step
        assert local.step == 1
        await (await reference.forward_backward(TINY_TASK))
        await (await reference.optim_step(ADAM))
        ours = await (await local.weights_snapshot())
        theirs = await (await reference.weights_snapshot())
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
