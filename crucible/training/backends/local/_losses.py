"""Tinker's built-in loss functions as pure torch maths, one token at a time.

Every loss is a *sum* over tokens (Tinker's convention: ``loss:sum``), so each function here
returns the per-token (elementwise) loss and the caller sums it. Notation as in Tinker's docs:
``target_logprobs`` are the learner's logprobs of the target tokens (they carry the gradient),
``sampling_logprobs`` the sampler's logprobs of the same tokens (the datum's ``logprobs``
input, a constant), ``A`` the datum's ``advantages`` input, and
``ratio = exp(target_logprobs - sampling_logprobs)``.

- cross_entropy: ``-target_logprobs * weights``; no settings.
- importance_sampling: ``-ratio * A``; no settings.
- ppo: ``-min(ratio * A, clip(ratio, low, high) * A)``; ``clip_low_threshold`` (default 0.8),
  ``clip_high_threshold`` (1.2).
- cispo: ``-sg(clip(ratio, low, high)) * target_logprobs * A``; the same keys, defaults 0.0
  and 4.0 (one-sided).
- dro: ``-(target_logprobs * A - beta / 2 * (target_logprobs - sampling_logprobs) ** 2)``;
  ``beta`` (0.1).

``sg`` stops the gradient. The RL losses take an optional ``weights`` input too, multiplying
each token's term (absent means ones, which is Tinker's formula exactly); padding has weight 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

import attrs
import torch

from crucible.training.port import InvalidLossConfig, UnsupportedLossFn


@attrs.frozen
class LossSpec:
    """What a loss function takes: ``loss_fn_inputs`` besides ``target_tokens`` (required and
    optional) and its ``loss_fn_config`` keys with their defaults."""

    required: tuple[str, ...]
    optional: tuple[str, ...]
    defaults: Mapping[str, float]


_RL_INPUTS: Final = ("logprobs", "advantages")
_CLIPS: Final = ("clip_low_threshold", "clip_high_threshold")

LOSS_SPECS: Final[Mapping[str, LossSpec]] = {
    "cross_entropy": LossSpec((), ("weights",), {}),
    "importance_sampling": LossSpec(_RL_INPUTS, ("weights",), {}),
    "ppo": LossSpec(_RL_INPUTS, ("weights",), dict(zip(_CLIPS, (0.8, 1.2), strict=True))),
    # One-sided by default, as Tinker's: no lower bound, the coefficient capped at 4.
    "cispo": LossSpec(_RL_INPUTS, ("weights",), dict(zip(_CLIPS, (0.0, 4.0), strict=True))),
    "dro": LossSpec(_RL_INPUTS, ("weights",), {"beta": 0.1}),
}
#: The loss functions the local backend implements, cross_entropy first.
LOSS_FNS: Final[tuple[str, ...]] = tuple(LOSS_SPECS)


def loss_spec(loss_fn: str) -> LossSpec:
    """The spec of ``loss_fn``; UnsupportedLossFn naming the ones there are otherwise."""
    spec = LOSS_SPECS.get(loss_fn)
    if spec is None:
        raise UnsupportedLossFn(
            f"loss_fn {loss_fn!r} is not supported by the local backend; use one of "
            f"{', '.join(LOSS_FNS)}"
        )
    return spec


def resolve_config(loss_fn: str, config: Mapping[str, float | str] | None) -> dict[str, float]:
    """``config`` checked against ``loss_fn``'s keys and ranges, with the defaults filled in."""
    spec = loss_spec(loss_fn)
    given = dict(config or {})
    unknown = sorted(set(given) - set(spec.defaults))
    if unknown:
        takes = f"it takes {', '.join(spec.defaults)}" if spec.defaults else "it takes no settings"
        raise InvalidLossConfig(f"loss_fn_config for {loss_fn} has unknown keys {unknown}; {takes}")
    resolved = dict(spec.defaults)
    for key, value in given.items():
        # bool is an int to Python, but True is no clip threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidLossConfig(f"loss_fn_config[{key!r}] must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InvalidLossConfig(f"loss_fn_config[{key!r}] must be finite, got {value!r}")
        resolved[key] = float(value)
    if "clip_low_threshold" in resolved:
        low, high = resolved["clip_low_threshold"], resolved["clip_high_threshold"]
        if not 0.0 <= low <= high:
            raise InvalidLossConfig(
                f"{loss_fn} clip thresholds must satisfy 0 <= clip_low_threshold <= "
                f"clip_high_threshold, got {low} and {high}"
            )
    if resolved.get("beta", 0.0) < 0.0:
        raise InvalidLossConfig(f"dro needs beta >= 0, got {resolved['beta']}")
    return resolved


# ---- the maths: per-token losses ---------------------------------------------------------


def cross_entropy(target_logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return -(target_logprobs * weights)


def importance_sampling(
    target_logprobs: torch.Tensor, sampling_logprobs: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    ratio = torch.exp(target_logprobs - sampling_logprobs)
    return -(ratio * advantages)


def ppo(
    target_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    low: float,
    high: float,
) -> torch.Tensor:
    ratio = torch.exp(target_logprobs - sampling_logprobs)
    clipped = torch.clamp(ratio, low, high)
    return -torch.minimum(ratio * advantages, clipped * advantages)


def cispo(
    target_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    low: float,
    high: float,
) -> torch.Tensor:
    ratio = torch.exp(target_logprobs - sampling_logprobs)
    coefficient = torch.clamp(ratio, low, high).detach()
    return -(coefficient * target_logprobs * advantages)


def dro(
    target_logprobs: torch.Tensor,
    sampling_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    quadratic = (target_logprobs - sampling_logprobs) ** 2
    return -(target_logprobs * advantages - 0.5 * beta * quadratic)


def elementwise_loss(
    loss_fn: str,
    target_logprobs: torch.Tensor,
    weights: torch.Tensor,
    sampling_logprobs: torch.Tensor | None,
    advantages: torch.Tensor | None,
    config: Mapping[str, float],
) -> torch.Tensor:
    """Each token's loss under ``loss_fn`` with a resolved ``config`` (see resolve_config):
    its sum is the batch's loss. All tensors have one shape; weight 0 drops a token."""
    if loss_fn == "cross_entropy":
        return cross_entropy(target_logprobs, weights)
    if sampling_logprobs is None or advantages is None:
        raise ValueError(f"{loss_fn} needs sampling logprobs and advantages")
    args = (target_logprobs, sampling_logprobs, advantages)
    if loss_fn == "importance_sampling":
        per_token = importance_sampling(*args)
    elif loss_fn == "ppo":
        per_token = ppo(*args, config["clip_low_threshold"], config["clip_high_threshold"])
    elif loss_fn == "cispo":
        per_token = cispo(*args, config["clip_low_threshold"], config["clip_high_threshold"])
    elif loss_fn == "dro":
        per_token = dro(*args, config["beta"])
    else:
        loss_spec(loss_fn)  # raises UnsupportedLossFn
        raise AssertionError(f"{loss_fn} has a spec but no formula")
    # Padding stays finite (its sampling logprob is 0, so its ratio is at most 1): weight 0
    # removes it exactly.
    return per_token * weights
