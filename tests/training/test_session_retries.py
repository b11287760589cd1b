"""The session's retries in place: over a backend that applies each request id once, a failed
operation is sent again with its id instead of restarting, and the run still ends with the
weights and losses of a fault-free run; only a lost backend restarts the session."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crucible.actors import Backoff, open_runtime
from crucible.telemetry import attach, detach
from crucible.training import FaultKind, FaultyBackend, TrainingBackend, open_training
from crucible.training.backends.local import LocalBackend, LocalBackendConfig
from crucible.training.session import SNAPSHOT_PREFIX, SessionRetry

from .test_session import STEPS, Backends, _assert_equal_weights, _train, reference
from .training_kit import ADAM, TINY_TASK, RecordingBackend

pytestmark = pytest.mark.anyio
__all__ = ["reference"]  # the fixture, shared with test_session

NO_WAIT = SessionRetry(max_retries=8, backoff=Backoff.none())


@pytest.mark.parametrize("kind", ["transient", "applied_then_failed"])
@pytest.mark.parametrize("seed", [1, 2])
async def test_lost_answers_are_retried_in_place_without_a_restart(
    kind: FaultKind,
    seed: int,
    make_config: Callable[..., LocalBackendConfig],
    tmp_path: Path,
    reference: Any,
) -> None:
    backends = Backends(
        lambda: make_config(run_id=f"retry-{kind}-{seed}"),
        rate=0.3,
        kinds=(kind,),
        seed=seed,
        apply_once=True,
    )
    run = await _train(backends, tmp_path / "faulty", retry=NO_WAIT)
    _assert_equal_weights(run.weights, reference[1])
    assert run.losses == reference[0]
    assert backends.injected > 0
    assert run.restarts == 0  # never lost: every failure was answered by a retry
    assert run.retries >= backends.injected


async def test_a_crash_still_restarts_and_snapshots_keep_the_replay_short(
    make_config: Callable[..., LocalBackendConfig], tmp_path: Path, reference: Any
) -> None:
    backends = Backends(
        lambda: make_config(run_id="crash"), rate=0.2, kinds=("crash",), seed=4, apply_once=True
    )
    run = await _train(backends, tmp_path / "crash", retry=NO_WAIT, snapshot_every=1)
    _assert_equal_weights(run.weights, reference[1])
    assert run.losses == reference[0]
    assert run.restarts > 0
    assert run.retries == 0  # a crash loses the backend: nothing to retry in place
    # Snapshots are deleted when the run ends.
    left = [p.name for p in (tmp_path / "crash" / "checkpoints").rglob("*")]
    assert not [name for name in left if name.startswith(SNAPSHOT_PREFIX)], left


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 10_000),
    rate=st.floats(0.1, 0.5),
    snapshot_every=st.sampled_from([0, 1, 2]),
    max_retries=st.sampled_from([0, 1, 8]),
)
async def test_random_fault_schedules_through_the_retry_path_give_identical_weights(
    seed: int,
    rate: float,
    snapshot_every: int,
    max_retries: int,
    make_config: Callable[..., LocalBackendConfig],
    tmp_path_factory: pytest.TempPathFactory,
    reference: Any,
) -> None:
    run_id = f"retry-random-{seed}-{int(rate * 1000)}-{snapshot_every}-{max_retries}"
    backends = Backends(
        lambda: make_config(run_id=run_id),
        rate=rate,
        kinds=("latency", "transient", "crash", "applied_then_failed"),
        seed=seed,
        apply_once=True,
    )
    retry = SessionRetry(max_retries=max_retries, backoff=Backoff(0.001, 0.002, seed=seed))
    run = await _train(
        backends,
        tmp_path_factory.mktemp(run_id),
        max_restarts=200,
        retry=retry,
        snapshot_every=snapshot_every,
    )
    _assert_equal_weights(run.weights, reference[1])
    assert run.losses == reference[0]


async def test_without_retries_a_lost_answer_restarts_the_session(
    make_config: Callable[..., LocalBackendConfig], tmp_path: Path, reference: Any
) -> None:
    """max_retries and max_restarts are separate limits: with no retries in place, the same
    faults cost restarts (and the weights are still those of a fault-free run)."""
    backends = Backends(
        lambda: make_config(run_id="no-retries"),
        rate=0.3,
        kinds=("applied_then_failed",),
        seed=1,
        apply_once=True,
    )
    run = await _train(backends, tmp_path, retry=SessionRetry(max_retries=0), max_restarts=100)
    _assert_equal_weights(run.weights, reference[1])
    assert run.restarts > 0
    assert run.retries == 0


class CrashAt(FaultyBackend):
    """Crashes (lost backend) at the ``n``-th optimizer step, 0-based."""

    def __init__(self, inner: TrainingBackend, n: int) -> None:
        super().__init__(inner, seed=0, rate=0.0)
        self.n = n
        self.steps = 0

    async def optim_step(self, adam_params: Any, **kwargs: Any) -> Any:
        from crucible.training import BackendCrashed

        if self.steps == self.n:
            raise BackendCrashed("injected: lost at a chosen step")
        self.steps += 1
        return await super().optim_step(adam_params, **kwargs)


class CountingLocal(LocalBackend):
    """Counts the optimizer steps submitted to it (replays included)."""

    submitted_steps = 0

    async def optim_step(self, adam_params: Any) -> Any:
        CountingLocal.submitted_steps += 1
        return await super().optim_step(adam_params)


@pytest.mark.parametrize("snapshot_every", [1, 0])
async def test_snapshots_bound_what_a_restart_replays(
    snapshot_every: int, make_config: Callable[..., LocalBackendConfig], tmp_path: Path
) -> None:
    """Without checkpoints from anyone else, a restart replays everything since the start;
    with a snapshot every step it replays at most the steps since the last one."""
    CountingLocal.submitted_steps = 0
    crash_at = STEPS - 2  # the backend crashes once, late, at this step's optim_step

    def make_backend(incarnation: int) -> TrainingBackend:
        return CrashAt(
            CountingLocal(make_config(run_id="snapshots")), crash_at if incarnation == 0 else -1
        )

    async with (
        open_runtime() as rt,
        open_training(
            rt, make_backend, tmp_path, backoff=Backoff.none(), snapshot_every=snapshot_every
        ) as training,
    ):
        for _ in range(STEPS):
            await (await training.session.train_step(TINY_TASK[:2], ADAM))[1]
        assert training.restarts == 1
    replayed = CountingLocal.submitted_steps - STEPS
    if snapshot_every:
        # The step since the last snapshot, and the one whose snapshot was still in flight.
        assert replayed <= 2
    else:
        assert replayed == crash_at  # every step before the crash, again


class SelfRetryingBackend(RecordingBackend):
    """Stands in for Tinker: its client already retried whatever failure reaches us."""

    retries_itself = True


async def test_a_backend_that_retries_itself_is_never_retried_again(tmp_path: Path) -> None:
    built: list[FaultyBackend] = []

    def make_backend(incarnation: int) -> TrainingBackend:
        faulty = FaultyBackend(
            SelfRetryingBackend(), seed=incarnation, rate=0.2, kinds=["transient"]
        )
        built.append(faulty)
        return faulty

    async with (
        open_runtime() as rt,
        open_training(
            rt, make_backend, tmp_path, backoff=Backoff.none(), max_restarts=100, snapshot_every=1
        ) as training,
    ):
        for _ in range(4):
            await (await training.session.train_step(TINY_TASK[:2], ADAM))[1]
        sampler = await (await training.session.sampling_client("fake://s"))
        await (await sampler.sample(TINY_TASK[0].model_input, 1, _params()))
        assert training.retries == 0
        assert training.restarts > 0
        assert training.restarts == sum(len(f.injected) for f in built)


def _params() -> Any:
    from tinker import types

    return types.SamplingParams(max_tokens=1)


def test_the_backoff_starts_in_milliseconds_and_is_reproducible() -> None:
    retry = SessionRetry()
    first = [retry.backoff.delay(k, retry.rng(0)) for k in range(1)]
    assert 0 < first[0] <= 0.005
    assert [retry.backoff.delay(k, retry.rng(3)) for k in range(6)] == [
        retry.backoff.delay(k, retry.rng(3)) for k in range(6)
    ]
    rng_a, rng_b = retry.rng(0), retry.rng(1)
    assert rng_a.random() != rng_b.random()  # each incarnation draws its own jitter
    with pytest.raises(ValueError, match="max_retries"):
        SessionRetry(max_retries=-1)
    assert isinstance(retry.rng(0), random.Random)


async def test_every_retry_is_reported_as_telemetry(
    make_config: Callable[..., LocalBackendConfig], tmp_path: Path
) -> None:
    seen: list[dict[str, Any]] = []
    attach(
        "test-session-retries",
        ["crucible.session.retry"],
        lambda _n, measurements, metadata, _c: seen.append({**measurements, **metadata}),
    )
    try:
        backends = Backends(make_config, rate=1.0, kinds=("transient",), seed=0, apply_once=True)
        retry = SessionRetry(max_retries=2, backoff=Backoff.none())
        async with (
            open_runtime() as rt,
            open_training(
                rt, backends, tmp_path, backoff=Backoff.none(), retry=retry, max_restarts=0
            ) as training,
        ):
            with pytest.raises(Exception, match="gave up"):
                await (await training.session.forward_backward(TINY_TASK[:2]))
    finally:
        detach("test-session-retries")
    # Two retries in place, then the backend counts as lost (and max_restarts=0 gives up).
    assert [(r["operation"], r["attempt"], r["request_id"]) for r in seen] == [
        ("forward_backward", 1, 0),
        ("forward_backward", 2, 0),
    ]
