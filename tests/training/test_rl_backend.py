"""The RL losses end to end on the local backend: through ApplyOnce, the faulty backend and the
supervised session (whose journal replays the loss and its config after a restart)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from tinker import types

from crucible.actors import Backoff, open_runtime
from crucible.training import (
    FaultKind,
    FaultyBackend,
    InvalidDatum,
    LatencyDistribution,
    TrainingBackend,
    open_training,
)
from crucible.training.backends.local import LocalBackend, LocalBackendConfig
from crucible.training.backends.local._engine import LocalEngine
from crucible.training.backends.local._lora import lora_parameters
from crucible.training.port import ApplyOnce, InvalidLossConfig

from .training_kit import ADAM, TINY_TASK

pytestmark = pytest.mark.anyio

MakeConfig = Callable[..., LocalBackendConfig]
#: Far enough off-policy that the default clip (0.8, 1.2) and this one give different losses.
OFFSET = 0.3
PPO_WIDE = {"clip_low_threshold": 0.5, "clip_high_threshold": 1.5}


def advantages_of(datum: types.Datum, sign: float) -> list[float]:
    """The datum's advantage on its completion tokens (weight 1), zero on its prompt."""
    return [sign * w for w in datum.loss_fn_inputs["weights"].tolist()]


def rl_data(
    logprobs: Sequence[torch.Tensor],
    offset: float = OFFSET,
    data: Sequence[types.Datum] = TINY_TASK,
) -> list[types.Datum]:
    """TINY_TASK as sampled completions: sampling logprobs ``offset`` below ``logprobs`` (a
    stale sampler), advantages +1 and -0.5 in turn."""
    return [
        types.Datum(
            model_input=datum.model_input,
            loss_fn_inputs={
                "target_tokens": datum.loss_fn_inputs["target_tokens"],
                "logprobs": (lp - offset).tolist(),
                "advantages": advantages_of(datum, 1.0 if index % 2 == 0 else -0.5),
            },
        )
        for index, (datum, lp) in enumerate(zip(data, logprobs, strict=True))
    ]


def reference_loss(
    loss_fn: str,
    config: dict[str, float],
    data: Sequence[types.Datum],
    output: types.ForwardBackwardOutput,
) -> float:
    """The loss recomputed from the returned logprobs, by Tinker's formulas."""
    total = 0.0
    for datum, out in zip(data, output.loss_fn_outputs, strict=True):
        t = out["logprobs"].to_torch().double()
        s = datum.loss_fn_inputs["logprobs"].to_torch().double()
        a = datum.loss_fn_inputs["advantages"].to_torch().double()
        ratio = torch.exp(t - s)
        if loss_fn == "importance_sampling":
            per_token = -ratio * a
        elif loss_fn in ("ppo", "cispo"):
            clipped = ratio.clamp(config["clip_low_threshold"], config["clip_high_threshold"])
            per_token = -torch.min(ratio * a, clipped * a) if loss_fn == "ppo" else -clipped * t * a
        else:
            per_token = -(t * a - 0.5 * config["beta"] * (t - s) ** 2)
        torch.testing.assert_close(
            out["elementwise_loss"].to_torch().double(), per_token, rtol=1e-5, atol=1e-6
        )
        total += float(per_token.sum())
    return total


def test_on_policy_importance_sampling_has_the_gradient_of_advantage_weighted_cross_entropy(
    make_config: MakeConfig,
) -> None:
    """With sampling logprobs from the current weights, importance_sampling's gradient is the
    policy gradient: -sum(A * grad logprob), i.e. cross_entropy's with weights = advantages."""
    rl, ce = LocalEngine(make_config(run_id="rl")), LocalEngine(make_config(run_id="ce"))
    current = [
        out["logprobs"].to_torch() for out in rl.forward(TINY_TASK, "cross_entropy").loss_fn_outputs
    ]
    on_policy = rl_data(current, offset=0.0)
    rl_out = rl.forward_backward(on_policy, "importance_sampling")
    weighted = [
        types.Datum(
            model_input=d.model_input,
            loss_fn_inputs={
                "target_tokens": d.loss_fn_inputs["target_tokens"],
                "weights": d.loss_fn_inputs["advantages"],
            },
        )
        for d in on_policy
    ]
    ce_out = ce.forward_backward(weighted, "cross_entropy")
    # The values differ (ratio 1 makes importance_sampling's loss -sum(A)); the gradients agree.
    advantage_sum = sum(sum(d.loss_fn_inputs["advantages"].tolist()) for d in on_policy)
    assert rl_out.metrics["loss:sum"] == pytest.approx(-advantage_sum, abs=1e-5)
    assert ce_out.metrics["loss:sum"] != pytest.approx(-advantage_sum, abs=1e-2)
    rl_grads, ce_grads = lora_parameters(rl.model), lora_parameters(ce.model)
    assert any(bool(p.grad.abs().sum() > 0) for p in rl_grads.values() if p.grad is not None)
    for key, parameter in rl_grads.items():
        assert parameter.grad is not None and ce_grads[key].grad is not None
        torch.testing.assert_close(parameter.grad, ce_grads[key].grad, rtol=1e-5, atol=1e-7)


def wrapped(local: LocalBackend) -> TrainingBackend:
    """Every wrapper a request can pass through on its way to the local backend."""
    return FaultyBackend(
        ApplyOnce(local), seed=0, rate=0.0, latency=LatencyDistribution(mean_s=0.0, max_s=0.0)
    )


@pytest.mark.parametrize(
    ("loss_fn", "config"),
    [
        ("importance_sampling", None),
        ("ppo", PPO_WIDE),
        ("cispo", {"clip_low_threshold": 0.0, "clip_high_threshold": 1.1}),
        ("dro", {"beta": 0.7}),
    ],
)
async def test_each_rl_loss_returns_tinkers_outputs_through_the_wrappers(
    loss_fn: str, config: dict[str, float] | None, make_config: MakeConfig
) -> None:
    async with LocalBackend(make_config()) as local:
        backend = wrapped(local)
        current = await (await backend.forward(TINY_TASK))
        data = rl_data([out["logprobs"].to_torch() for out in current.loss_fn_outputs])
        fwd = await (await backend.forward(data, loss_fn, config))
        fwd_bwd = await (await backend.forward_backward(data, loss_fn, config))
        await (await backend.optim_step(types.AdamParams(learning_rate=1e-4)))
        after = await (await backend.forward(data, loss_fn, config))
    resolved = config or {}
    for output in (fwd, fwd_bwd):
        assert len(output.loss_fn_outputs) == len(data)
        for datum, out in zip(data, output.loss_fn_outputs, strict=True):
            assert out["logprobs"].to_torch().shape == (datum.model_input.length,)
            assert out["elementwise_loss"].to_torch().shape == (datum.model_input.length,)
        assert output.metrics["loss:sum"] == pytest.approx(
            reference_loss(loss_fn, resolved, data, output), rel=1e-5, abs=1e-5
        )
        for key in output.metrics:
            assert key.split(":")[1] in {"sum", "mean", "min", "max"}
    assert fwd.metrics == fwd_bwd.metrics  # forward computes the same loss, without gradients
    # Adam's first step is a sign step against the gradient: a small one lowers the loss (to
    # first order, by lr * the gradient's L1 norm), whichever loss it is.
    assert after.metrics["loss:sum"] < fwd.metrics["loss:sum"]


async def test_the_config_reaches_the_loss(make_config: MakeConfig) -> None:
    """ppo with a wide clip differs from ppo with Tinker's default clip on off-policy data:
    the config is not dropped on the way."""
    async with LocalBackend(make_config()) as local:
        backend = wrapped(local)
        current = await (await backend.forward(TINY_TASK))
        data = rl_data([out["logprobs"].to_torch() for out in current.loss_fn_outputs])
        default = await (await backend.forward(data, "ppo"))
        wide = await (await backend.forward(data, "ppo", PPO_WIDE))
    default_clip = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    assert default.metrics["loss:sum"] == pytest.approx(
        reference_loss("ppo", default_clip, data, default), rel=1e-5, abs=1e-5
    )
    assert wide.metrics["loss:sum"] == pytest.approx(
        reference_loss("ppo", PPO_WIDE, data, wide), rel=1e-5, abs=1e-5
    )
    assert abs(wide.metrics["loss:sum"] - default.metrics["loss:sum"]) > 0.1


async def test_refused_rl_requests_are_typed_and_change_nothing(make_config: MakeConfig) -> None:
    async with LocalBackend(make_config()) as local:
        backend = wrapped(local)
        current = await (await backend.forward(TINY_TASK))
        data = rl_data([out["logprobs"].to_torch() for out in current.loss_fn_outputs])
        before = await (await local.weights_snapshot())
        with pytest.raises(InvalidLossConfig, match=r"unknown keys \['epsilon'\]"):
            await (await backend.forward_backward(data, "ppo", {"epsilon": 0.2}))
        with pytest.raises(
            InvalidDatum, match=r"lacks loss_fn_inputs \['advantages', 'logprobs'\]"
        ):
            await (await backend.forward_backward(TINY_TASK, "importance_sampling"))
        await (await backend.optim_step(ADAM))  # nothing accumulated: nothing to apply
        after = await (await local.weights_snapshot())
        assert all(torch.equal(before[k], after[k]) for k in before)
        # the backend carries on
        ok = await (await backend.forward_backward(data, "dro", {"beta": 0.1}))
        assert ok.metrics["loss:sum"] == pytest.approx(
            reference_loss("dro", {"beta": 0.1}, data, ok), rel=1e-5
        )


def checked(batch: list[types.Datum], output: types.ForwardBackwardOutput) -> float:
    """The loss of a step's output, after checking it is ppo's with the wide clip (the config
    was not lost on the way)."""
    loss: float = output.metrics["loss:sum"]
    assert loss == pytest.approx(reference_loss("ppo", PPO_WIDE, batch, output), abs=1e-5)
    return loss


async def _train_rl(
    make_backend: Callable[[int], TrainingBackend],
    built: list[LocalBackend],
    log_dir: Path,
    data: list[types.Datum],
) -> tuple[list[float], int, dict[str, torch.Tensor]]:
    """A pipelined ppo loop with a non-default clip through the supervised session: each
    step's loss, the restarts plus in-place retries, and the final weights."""
    losses: list[float] = []
    async with (
        open_runtime() as rt,
        open_training(rt, make_backend, log_dir, backoff=Backoff.none(), max_restarts=100) as tree,
    ):
        session = tree.session
        pending: Any = None
        for step in range(6):
            batch = [data[(2 * step) % 8], data[(2 * step + 1) % 8]]
            submitted = (
                await session.forward_backward(batch, "ppo", PPO_WIDE),
                await session.optim_step(ADAM),
            )
            if pending is not None:
                losses.append(checked(pending[2], await pending[0]))
                await pending[1]
            pending = (*submitted, batch)
            if step == 2:
                await pending[1]
                await tree.checkpoints.save(step + 1)
        losses.append(checked(pending[2], await pending[0]))
        await pending[1]
        # Answered in order: nothing submitted before it is in flight, so the last backend
        # built holds the final weights.
        await (await session.forward(data[:1], "ppo", PPO_WIDE))
        recovered = tree.restarts + tree.retries
        return losses, recovered, await (await built[-1].weights_snapshot())


@pytest.mark.parametrize(
    ("apply_once", "kinds"),
    [
        (True, ("transient", "applied_then_failed")),  # retried in place, with the request id
        (False, ("crash", "transient")),  # restarted: the journal replays from a checkpoint
    ],
)
async def test_faults_under_an_rl_loop_end_with_the_fault_free_weights(
    apply_once: bool, kinds: tuple[FaultKind, ...], make_config: MakeConfig, tmp_path: Path
) -> None:
    """Every retried or replayed request carries its loss and its config: the losses and the
    weights are bitwise those of a fault-free run."""
    engine = LocalEngine(make_config(run_id="probe"))
    current = [
        o["logprobs"].to_torch() for o in engine.forward(TINY_TASK, "cross_entropy").loss_fn_outputs
    ]
    data = rl_data(current)
    built: dict[str, list[LocalBackend]] = {"clean": [], "faulty": []}

    def factory(name: str, rate: float) -> Callable[[int], TrainingBackend]:
        def make(incarnation: int) -> TrainingBackend:
            local = LocalBackend(make_config(run_id=name))
            built[name].append(local)
            return FaultyBackend(
                ApplyOnce(local) if apply_once else local,
                seed=7 + incarnation,
                rate=rate,
                kinds=kinds,
                latency=LatencyDistribution(mean_s=0.001, max_s=0.002),
            )

        return make

    clean_losses, clean_recovered, clean = await _train_rl(
        factory("clean", 0.0), built["clean"], tmp_path / "c", data
    )
    faulty_losses, recovered, faulty = await _train_rl(
        factory("faulty", 0.3), built["faulty"], tmp_path / "f", data
    )
    assert clean_recovered == 0 and recovered > 0
    if not apply_once:
        assert len(built["faulty"]) > 1  # at least one restart replayed the journal
    assert faulty_losses == clean_losses
    assert all(torch.equal(clean[k], faulty[k]) for k in clean)
