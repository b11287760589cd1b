"""Tinker's RL losses as pure maths: each loss's gradient equals autograd of a reference formula
written here (and its closed form), on random inputs; config and input errors are typed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import get_args

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tinker import types

from crucible.training.backends.local._batch import build_batch
from crucible.training.backends.local._losses import (
    LOSS_FNS,
    LOSS_SPECS,
    elementwise_loss,
    resolve_config,
)
from crucible.training.port import InvalidDatum, InvalidLossConfig, UnsupportedLossFn

RL_LOSSES = ("importance_sampling", "ppo", "cispo", "dro")
Tensor = torch.Tensor


# ---- reference formulas, as Tinker's docs write them --------------------------------------


def ref_importance_sampling(t: Tensor, s: Tensor, a: Tensor, cfg: dict[str, float]) -> Tensor:
    return -(torch.exp(t - s) * a)


def ref_ppo(t: Tensor, s: Tensor, a: Tensor, cfg: dict[str, float]) -> Tensor:
    ratio = torch.exp(t - s)
    clipped = torch.clamp(ratio, cfg["clip_low_threshold"], cfg["clip_high_threshold"])
    return -torch.min(ratio * a, clipped * a)


def ref_cispo(t: Tensor, s: Tensor, a: Tensor, cfg: dict[str, float]) -> Tensor:
    ratio = torch.exp(t - s)
    clipped = torch.clamp(ratio, cfg["clip_low_threshold"], cfg["clip_high_threshold"])
    return -(clipped.detach() * t * a)


def ref_dro(t: Tensor, s: Tensor, a: Tensor, cfg: dict[str, float]) -> Tensor:
    return -(t * a - 0.5 * cfg["beta"] * (t - s) ** 2)


REFERENCES: dict[str, Callable[[Tensor, Tensor, Tensor, dict[str, float]], Tensor]] = {
    "importance_sampling": ref_importance_sampling,
    "ppo": ref_ppo,
    "cispo": ref_cispo,
    "dro": ref_dro,
}


def closed_form_gradient(
    loss_fn: str, t: Tensor, s: Tensor, a: Tensor, w: Tensor, cfg: dict[str, float]
) -> Tensor:
    """d(sum of w * elementwise loss)/d target_logprobs, worked out by hand."""
    ratio = torch.exp(t - s)
    if loss_fn == "importance_sampling":
        return -a * ratio * w
    if loss_fn == "ppo":
        low, high = cfg["clip_low_threshold"], cfg["clip_high_threshold"]
        # The unclipped term carries the gradient where it is the minimum or where clipping
        # changes nothing; where the clipped term is strictly smaller, the gradient is zero.
        active = (ratio * a < torch.clamp(ratio, low, high) * a) | (
            (ratio >= low) & (ratio <= high)
        )
        return torch.where(active, -a * ratio * w, torch.zeros_like(t))
    if loss_fn == "cispo":
        low, high = cfg["clip_low_threshold"], cfg["clip_high_threshold"]
        return -torch.clamp(ratio, low, high) * a * w
    assert loss_fn == "dro"
    return -(a - cfg["beta"] * (t - s)) * w


# ---- strategies ----------------------------------------------------------------------------


def vectors(n: int, low: float, high: float) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float64, n, elements=st.floats(low, high, allow_subnormal=False))


@st.composite
def loss_inputs(draw: st.DrawFn) -> tuple[str, dict[str, float], Tensor, Tensor, Tensor, Tensor]:
    loss_fn = draw(st.sampled_from(RL_LOSSES))
    n = draw(st.integers(1, 24))
    target = draw(vectors(n, -8.0, 0.0))
    sampling = draw(vectors(n, -8.0, 0.0))
    advantages = draw(vectors(n, -4.0, 4.0))
    weights = draw(vectors(n, 0.0, 2.0))
    config: dict[str, float] = {}
    if loss_fn in ("ppo", "cispo"):
        low = draw(st.floats(0.0, 1.0))
        config = {"clip_low_threshold": low, "clip_high_threshold": draw(st.floats(1.0, 5.0))}
    elif loss_fn == "dro":
        config = {"beta": draw(st.floats(0.0, 2.0))}
    tensors = [torch.tensor(x) for x in (target, sampling, advantages, weights)]
    return loss_fn, config, *tensors  # type: ignore[return-value]


# ---- the maths -----------------------------------------------------------------------------


def test_the_losses_are_the_ones_the_tinker_sdk_names() -> None:
    assert set(LOSS_FNS) <= set(get_args(types.LossFnType))
    assert LOSS_FNS[0] == "cross_entropy" and set(RL_LOSSES) == set(LOSS_FNS[1:])


@settings(max_examples=300, deadline=None)
@given(loss_inputs())
def test_each_gradient_equals_autograd_of_the_reference_and_its_closed_form(
    drawn: tuple[str, dict[str, float], Tensor, Tensor, Tensor, Tensor],
) -> None:
    loss_fn, config, target, sampling, advantages, weights = drawn
    resolved = resolve_config(loss_fn, config)
    assert resolved == config  # every key was given: nothing filled in

    ours_t = target.clone().requires_grad_(True)
    ours = elementwise_loss(loss_fn, ours_t, weights, sampling, advantages, resolved)
    ours.sum().backward()  # type: ignore[no-untyped-call]

    ref_t = target.clone().requires_grad_(True)
    reference = REFERENCES[loss_fn](ref_t, sampling, advantages, config) * weights
    reference.sum().backward()  # type: ignore[no-untyped-call]

    assert ours_t.grad is not None and ref_t.grad is not None
    torch.testing.assert_close(ours.detach(), reference.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_t.grad, ref_t.grad, rtol=1e-12, atol=1e-12)
    expected = closed_form_gradient(loss_fn, target, sampling, advantages, weights, config)
    torch.testing.assert_close(ours_t.grad, expected, rtol=1e-9, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 24).flatmap(
        lambda n: st.tuples(vectors(n, -8.0, 0.0), vectors(n, -4.0, 4.0), vectors(n, 0.0, 2.0))
    )
)
def test_on_policy_importance_sampling_is_the_policy_gradient(
    drawn: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Sampled from the current policy (sampling logprobs = current logprobs), the ratio is 1:
    the gradient is -advantage * d logprob, the REINFORCE policy gradient, and the loss is
    cross_entropy's with the advantages as weights."""
    target, advantages, weights = (torch.tensor(x) for x in drawn)
    t = target.clone().requires_grad_(True)
    loss = elementwise_loss("importance_sampling", t, weights, target.clone(), advantages, {}).sum()
    loss.backward()  # type: ignore[no-untyped-call]
    assert t.grad is not None
    torch.testing.assert_close(t.grad, -advantages * weights, rtol=0, atol=0)
    assert float(loss.detach()) == pytest.approx(
        -float((advantages * weights).sum()), rel=1e-12, abs=1e-12
    )


def test_defaults_are_tinkers() -> None:
    assert resolve_config("ppo", None) == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    assert resolve_config("cispo", {}) == {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0}
    assert resolve_config("dro", None) == {"beta": 0.1}
    assert resolve_config("ppo", {"clip_high_threshold": 1.5}) == {
        "clip_low_threshold": 0.8,
        "clip_high_threshold": 1.5,
    }
    assert resolve_config("importance_sampling", None) == {}
    assert resolve_config("cross_entropy", {}) == {}


def test_ppo_clips_and_cispo_caps_the_coefficient() -> None:
    """Spot values worked by hand: ratio e^0.5 ~ 1.6487 with advantage 1 is clipped to 1.2 by
    ppo (no gradient) and kept by cispo (under its cap of 4)."""
    t = torch.tensor([-0.5], dtype=torch.float64, requires_grad=True)
    s, a, w = torch.tensor([-1.0], dtype=torch.float64), torch.ones(1), torch.ones(1)
    ppo = elementwise_loss("ppo", t, w, s, a, resolve_config("ppo", None))
    assert float(ppo) == pytest.approx(-1.2)
    (grad,) = torch.autograd.grad(ppo.sum(), t)
    assert float(grad) == 0.0
    cispo = elementwise_loss("cispo", t, w, s, a, resolve_config("cispo", None))
    assert float(cispo) == pytest.approx(-math.exp(0.5) * -0.5)


# ---- typed errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss_fn", "config", "match"),
    [
        ("ppo", {"clip_low": 0.9}, r"unknown keys \['clip_low'\].*clip_low_threshold"),
        ("importance_sampling", {"beta": 0.1}, r"unknown keys \['beta'\].*no settings"),
        ("cross_entropy", {"clip_low_threshold": 0.5}, "unknown keys"),
        ("dro", {"beta": -0.5}, "beta >= 0"),
        ("dro", {"beta": "high"}, r"loss_fn_config\['beta'\] must be a number"),
        ("ppo", {"clip_low_threshold": float("nan")}, "finite"),
        ("ppo", {"clip_low_threshold": 1.5, "clip_high_threshold": 1.2}, "0 <= clip_low"),
        ("cispo", {"clip_low_threshold": -0.1}, "0 <= clip_low"),
        ("ppo", {"clip_high_threshold": True}, "must be a number"),
    ],
)
def test_bad_configs_are_invalid_loss_config_naming_the_problem(
    loss_fn: str, config: dict[str, float | str], match: str
) -> None:
    with pytest.raises(InvalidLossConfig, match=match):
        resolve_config(loss_fn, config)


def test_an_unknown_loss_is_unsupported_and_names_the_known_ones() -> None:
    with pytest.raises(UnsupportedLossFn, match=r"'stable_reinforce'.*cispo, dro"):
        resolve_config("stable_reinforce", None)


def rl_datum(n: int = 4, **overrides: object) -> types.Datum:
    inputs: dict[str, object] = {
        "target_tokens": list(range(2, 2 + n)),
        "logprobs": [-1.0] * n,
        "advantages": [0.5] * n,
    }
    inputs.update(overrides)
    inputs = {key: value for key, value in inputs.items() if value is not None}
    return types.Datum(
        model_input=types.ModelInput.from_ints(list(range(1, 1 + n))),
        loss_fn_inputs=inputs,  # type: ignore[arg-type]
    )


def batch_of(data: list[types.Datum], loss_fn: str = "ppo") -> object:
    return build_batch(
        data, loss_fn, None, context=64, vocab=100, pad_token_id=0, device=torch.device("cpu")
    )


@pytest.mark.parametrize(
    ("datum", "match"),
    [
        (rl_datum(advantages=None), r"datum 0 lacks loss_fn_inputs \['advantages'\]"),
        (rl_datum(logprobs=None, advantages=None), r"lacks .*'advantages', 'logprobs'"),
        (rl_datum(logprobs=[-1.0] * 3), r"'logprobs'\] has shape \[3\].*shape \[4\]"),
        (rl_datum(advantages=[[0.5]] * 4), r"'advantages'\] has shape \[4, 1\]"),
        (rl_datum(target_tokens=[2, 3]), r"'target_tokens'\] has shape \[2\]"),
        (rl_datum(weights=[1.0] * 5), r"'weights'\] has shape \[5\]"),
        (
            rl_datum(mask=types.TensorData(data=[1.0] * 4, dtype="float32", shape=[4])),
            r"\['mask'\] that ppo does not take",
        ),
        (rl_datum(advantages=[0.5, float("inf"), 0.5, 0.5]), "'advantages'.*non-finite"),
        (rl_datum(logprobs=[float("nan")] * 4), "'logprobs'.*non-finite"),
        (rl_datum(target_tokens=[2, 3, 4, 100]), "outside 0..99"),
    ],
)
def test_bad_rl_datums_are_invalid_datum_naming_the_input(datum: types.Datum, match: str) -> None:
    with pytest.raises(InvalidDatum, match=match):
        batch_of([datum])
    with pytest.raises(InvalidDatum, match=match.replace("datum 0", "datum 1")):
        batch_of([rl_datum(), datum])  # the error names the datum at fault


def test_rl_batches_pad_the_rl_inputs_with_zeros() -> None:
    batch = build_batch(
        [rl_datum(2), rl_datum(4, weights=[1.0, 0.0, 2.0, 1.0])],
        "dro",
        {"beta": 0.3},
        context=64,
        vocab=100,
        pad_token_id=0,
        device=torch.device("cpu"),
    )
    assert batch.config == {"beta": 0.3}
    assert batch.sampling_logprobs is not None and batch.advantages is not None
    assert batch.sampling_logprobs.tolist() == [[-1.0, -1.0, 0.0, 0.0], [-1.0] * 4]
    assert batch.advantages.tolist() == [[0.5, 0.5, 0.0, 0.0], [0.5] * 4]
    assert batch.weights.tolist() == [[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 2.0, 1.0]]


def test_every_rl_loss_takes_the_same_inputs() -> None:
    for loss_fn in RL_LOSSES:
        spec = LOSS_SPECS[loss_fn]
        assert spec.required == ("logprobs", "advantages") and spec.optional == ("weights",)
