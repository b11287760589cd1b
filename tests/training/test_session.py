"""The supervised session: faults anywhere end with the weights of a fault-free run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tinker import types

from crucible.actors import Backoff, open_runtime
from crucible.telemetry import attach, detach
from crucible.training import (
    FAULT_KINDS,
    FaultKind,
    FaultyBackend,
    InvalidDatum,
    LatencyDistribution,
    TrainingBackend,
    TrainingFailed,
    open_training,
)
from crucible.training.backends.local import LocalBackend, LocalBackendConfig
from crucible.training.port import ApplyOnce
from crucible.training.session import UnknownOperation

from .training_kit import ADAM, TINY_TASK

pytestmark = pytest.mark.anyio

STEPS = 8
SAVE_EVERY = 3


class Backends:
    """A backend factory that remembers what it built (the last one holds the final weights)."""

    def __init__(
        self,
        config: Callable[..., LocalBackendConfig],
        rate: float = 0.0,
        kinds: tuple[FaultKind, ...] = FAULT_KINDS,
        seed: int = 0,
        apply_once: bool = False,
    ) -> None:
        self.config = config
        self.rate = rate
        self.kinds = kinds
        self.seed = seed
        self.apply_once = apply_once
        self.built: list[LocalBackend] = []
        self.faulty: list[FaultyBackend] = []

    def __call__(self, incarnation: int) -> TrainingBackend:
        local = LocalBackend(self.config())
        self.built.append(local)
        # The faults model a lost connection: in front of the backend's record of requests.
        inner: TrainingBackend = ApplyOnce(local) if self.apply_once else local
        if self.rate == 0:
            return inner
        faulty = FaultyBackend(
            inner,
            seed=self.seed * 1000 + incarnation,  # a new backend draws new faults
            rate=self.rate,
            kinds=self.kinds,
            latency=LatencyDistribution(mean_s=0.001, max_s=0.005),
        )
        self.faulty.append(faulty)
        return faulty

    async def final_weights(self) -> dict[str, torch.Tensor]:
        return await (await self.built[-1].weights_snapshot())

    @property
    def injected(self) -> int:
        return sum(len(f.injected) for f in self.faulty)


Weights = dict[str, torch.Tensor]


class Trained:
    """What a run left: every caller's loss, the restarts and retries, the final weights."""

    def __init__(self, losses: list[float], restarts: int, retries: int, weights: Weights):
        self.losses = losses
        self.restarts = restarts
        self.retries = retries
        self.weights = weights


async def _train(backends: Backends, log_dir: Path, **tree: Any) -> Trained:
    """A pipelined loop: step k+1 is submitted before step k's results are awaited."""
    losses: list[float] = []
    async with (
        open_runtime() as rt,
        open_training(rt, backends, log_dir, backoff=Backoff.none(), **tree) as training,
    ):
        session = training.session
        pending = None
        for step in range(STEPS):
            batch = [TINY_TASK[(2 * step) % 8], TINY_TASK[(2 * step + 1) % 8]]
            submitted = await session.train_step(batch, ADAM)
            if pending is not None:
                losses.append((await pending[0]).metrics["loss:sum"])
                await pending[1]
            pending = submitted
            if (step + 1) % SAVE_EVERY == 0:
                await pending[1]
                await training.checkpoints.save(step + 1)
        assert pending is not None
        losses.append((await pending[0]).metrics["loss:sum"])
        await pending[1]
        # Results complete in submission order: once this read is answered, nothing submitted
        # before it (a session snapshot after the last step) is in flight, so no restart can
        # follow and the last backend built holds the final weights.
        await (await session.forward(TINY_TASK[:1]))
        status = await session.status()
        assert status.step == STEPS
        weights = await backends.final_weights()
        return Trained(losses, training.restarts, training.retries, weights)


def _assert_equal_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    unequal = [key for key in a if not torch.equal(a[key], b[key])]
    assert unequal == [], f"weights differ in {unequal}"


@pytest.fixture
async def reference(make_config: Callable[..., LocalBackendConfig], tmp_path: Path) -> Any:
    backends = Backends(make_config)
    run = await _train(backends, tmp_path / "reference")
    assert run.restarts == 0
    return run.losses, run.weights


@pytest.mark.parametrize("kind", ["transient", "crash", "applied_then_failed", "latency"])
@pytest.mark.parametrize("seed", [1, 2])
async def test_each_fault_kind_ends_with_fault_free_weights(
    kind: FaultKind,
    seed: int,
    make_config: Callable[..., LocalBackendConfig],
    tmp_path: Path,
    reference: Any,
) -> None:
    backends = Backends(
        lambda: make_config(run_id=f"faulty-{kind}-{seed}"), rate=0.25, kinds=(kind,), seed=seed
    )
    run = await _train(backends, tmp_path / "faulty", max_restarts=100)
    _assert_equal_weights(run.weights, reference[1])
    assert run.losses == reference[0]  # every caller got the result of its own step
    assert backends.injected > 0
    if kind != "latency":
        assert run.restarts > 0


async def test_a_hang_is_detected_by_the_op_timeout_and_replayed(
    make_config: Callable[..., LocalBackendConfig], tmp_path: Path, reference: Any
) -> None:
    backends = Backends(lambda: make_config(run_id="hang"), rate=0.1, kinds=("hang",), seed=3)
    run = await _train(backends, tmp_path / "hang", op_timeout=0.5)
    assert run.restarts > 0
    _assert_equal_weights(run.weights, reference[1])
    assert run.losses == reference[0]


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 10_000), rate=st.floats(0.1, 0.3))
async def test_random_fault_schedules_give_identical_weights(
    seed: int,
    rate: float,
    make_config: Callable[..., LocalBackendConfig],
    tmp_path_factory: pytest.TempPathFactory,
    reference: Any,
) -> None:
    run = f"random-{seed}-{int(rate * 1000)}"
    backends = Backends(
        lambda: make_config(run_id=run),
        rate=rate,
        kinds=("transient", "crash", "applied_then_failed"),
        seed=seed,
    )
    trained = await _train(backends, tmp_path_factory.mktemp(run), max_restarts=100)
    _assert_equal_weights(trained.weights, reference[1])


async def test_giving_up_fails_every_waiting_caller_with_the_last_failure(
    make_config: Callable[..., LocalBackendConfig], tmp_path: Path
) -> None:
    backends = Backends(make_config, rate=1.0, kinds=("crash",), seed=0)
    async with (
        open_runtime() as rt,
        open_training(rt, backends, tmp_path, backoff=Backoff.none(), max_restarts=2) as training,
    ):
        fb = await training.session.forward_backward(TINY_TASK[:2])
        with pytest.raises(TrainingFailed, match="after 2 restarts; last failure: replaying"):
            await fb
        with pytest.raises(TrainingFailed, match="BackendCrashed"):
            await training.session.optim_step(ADAM)


async def test_a_cancelled_caller_never_wedges_the_session(
    make_config: Callable[..., LocalBackendConfig], tmp_path: Path
) -> None:
    backends = Backends(make_config)
    async with open_runtime() as rt, open_training(rt, backends, tmp_path) as training:
        session = training.session
        for _ in range(3):
            fb, _ = await session.train_step(TINY_TASK[:4], ADAM)
            with anyio.move_on_after(0):  # the caller gives up at once
                await fb
        fb, optim = await session.train_step(TINY_TASK[:4], ADAM)
        assert (await fb).metrics["loss:sum"] > 0
        await optim
        assert (await session.status()).step == 4


async def test_a_bad_datum_is_the_callers_error_and_the_session_goes_on(
    make_config: Callable[..., LocalBackendConfig], tmp_path: Path
) -> None:
    backends = Backends(make_config)
    bad = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [1, 2], "weights": [1.0, 1.0]},  # wrong length
    )
    async with open_runtime() as rt, open_training(rt, backends, tmp_path) as training:
        with pytest.raises(InvalidDatum):
            await (await training.session.forward_backward([bad]))
        fb, optim = await training.session.train_step(TINY_TASK[:2], ADAM)
        await fb
        await optim
        assert training.restarts == 0
        assert (await training.session.status()).step == 1


async def test_sampling_through_the_session_survives_a_restart(
    make_config: Callable[..., LocalBackendConfig], tmp_path: Path
) -> None:
    backends = Backends(make_config)
    async with (
        open_runtime() as rt,
        open_training(rt, backends, tmp_path, backoff=Backoff.none()) as training,
    ):
        await (await training.session.train_step(TINY_TASK[:2], ADAM))[1]
        sampler = await (await training.session.sampling_client())
        prompt = types.ModelInput.from_ints(training.session.tokenizer.encode("12 + 12 = "))
        params = types.SamplingParams(max_tokens=4, temperature=0.0, seed=1)
        first = await (await sampler.sample(prompt, 1, params))
        # Kill the session's incarnation; the sampler's path survives it.
        session_ref = rt.whereis("training.session")
        assert session_ref is not None
        session_ref._cell.kill()
        await session_ref.wait()
        again = await (await sampler.sample(prompt, 1, params))
        assert again.sequences[0].tokens == first.sequences[0].tokens


async def test_the_tree_reports_crashes_restarts_and_status_as_telemetry(
    make_config: Callable[..., LocalBackendConfig], tmp_path: Path
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    attach(
        "test-session-events",
        ["crucible.actor.*", "crucible.session.status"],
        lambda name, _m, metadata, _c: seen.append((name, dict(metadata))),
    )
    try:
        backends = Backends(make_config, rate=1.0, kinds=("crash",), seed=0)
        async with (
            open_runtime() as rt,
            open_training(
                rt, backends, tmp_path, backoff=Backoff.none(), max_restarts=1
            ) as training,
        ):
            with pytest.raises(TrainingFailed):
                await (await training.session.forward_backward(TINY_TASK[:2]))
    finally:
        detach("test-session-events")
    names = [name for name, _ in seen]
    assert "crucible.actor.crashed" in names
    assert "crucible.actor.escalated" in names
    statuses = [m["status"] for name, m in seen if name == "crucible.session.status"]
    assert statuses[:3] == ["initializing", "ready", "training"]
    assert "failed" in statuses


async def test_an_unknown_operation_is_refused_without_harming_the_session(
    make_config: Callable[..., LocalBackendConfig], tmp_path: Path
) -> None:
    async with open_runtime() as rt, open_training(rt, Backends(make_config), tmp_path) as tree:
        with pytest.raises(UnknownOperation, match="'explode'"):
            await tree.session._submit("explode")
        fb, optim = await tree.session.train_step(TINY_TASK[:2], ADAM)
        await fb
        await optim
        assert tree.restarts == 0
