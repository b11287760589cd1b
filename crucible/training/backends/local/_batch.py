"""Datums to one padded batch for the local engine, checked against the model and the loss.

Every check runs before the model does, so a refused batch changes nothing: ``InvalidDatum``
names the datum and the input, ``UnsupportedLossFn`` the loss, ``InvalidLossConfig`` the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import torch
from tinker import types

from crucible.training.backends.local._losses import loss_spec, resolve_config
from crucible.training.port import InvalidDatum


@attrs.frozen
class Batch:
    loss_fn: str
    config: dict[str, float]  # resolved: the defaults filled in
    inputs: torch.Tensor  # [B, T] int64, right-padded
    targets: torch.Tensor  # [B, T] int64
    weights: torch.Tensor  # [B, T] float32, zero on padding
    lengths: list[int]
    # The RL losses' inputs ([B, T] float32, zero on padding); None for cross_entropy.
    sampling_logprobs: torch.Tensor | None = None
    advantages: torch.Tensor | None = None


@attrs.frozen
class _Row:
    tokens: list[int]
    targets: torch.Tensor
    weights: torch.Tensor
    rl: tuple[torch.Tensor, torch.Tensor] | None  # sampling logprobs, advantages


def build_batch(
    data: Sequence[types.Datum],
    loss_fn: str,
    loss_fn_config: Mapping[str, float | str] | None,
    *,
    context: int,
    vocab: int,
    pad_token_id: int,
    device: torch.device,
) -> Batch:
    spec = loss_spec(loss_fn)
    config = resolve_config(loss_fn, loss_fn_config)
    if not data:
        raise InvalidDatum("forward_backward needs at least one Datum")
    rows: list[_Row] = []
    for index, datum in enumerate(data):
        tokens = datum.model_input.to_ints()
        if not 1 <= len(tokens) <= context:
            raise InvalidDatum(
                f"datum {index} has {len(tokens)} input tokens; the context length allows 1 to "
                f"{context}"
            )
        if loss_fn == "cross_entropy":
            row = _cross_entropy_row(index, datum, tokens)
        else:
            row = _rl_row(index, datum, tokens, loss_fn, spec.required, spec.optional)
        if any(not 0 <= t < vocab for t in tokens) or bool(
            ((row.targets < 0) | (row.targets >= vocab)).any()
        ):
            raise InvalidDatum(f"datum {index} has token ids outside 0..{vocab - 1}")
        rows.append(row)
    width = max(len(row.tokens) for row in rows)
    shape = (len(rows), width)
    inputs = torch.full(shape, pad_token_id, dtype=torch.int64)
    targets = torch.zeros(shape, dtype=torch.int64)
    weights = torch.zeros(shape, dtype=torch.float32)
    rl = None if loss_fn == "cross_entropy" else (torch.zeros(shape), torch.zeros(shape))
    for position, row in enumerate(rows):
        length = len(row.tokens)
        inputs[position, :length] = torch.tensor(row.tokens)
        targets[position, :length] = row.targets
        weights[position, :length] = row.weights
        if rl is not None and row.rl is not None:
            rl[0][position, :length] = row.rl[0]
            rl[1][position, :length] = row.rl[1]
    return Batch(
        loss_fn=loss_fn,
        config=config,
        inputs=inputs.to(device),
        targets=targets.to(device),
        weights=weights.to(device),
        lengths=[len(row.tokens) for row in rows],
        sampling_logprobs=None if rl is None else rl[0].to(device),
        advantages=None if rl is None else rl[1].to(device),
    )


def _cross_entropy_row(index: int, datum: types.Datum, tokens: list[int]) -> _Row:
    """As the local backend always read cross_entropy datums: inputs flattened, other keys
    ignored."""
    if "target_tokens" not in datum.loss_fn_inputs:
        raise InvalidDatum(f"datum {index} has no loss_fn_inputs['target_tokens']")
    targets = datum.loss_fn_inputs["target_tokens"].to_torch().to(torch.int64).flatten()
    weight_data = datum.loss_fn_inputs.get("weights")
    weights = (
        torch.ones(len(tokens))
        if weight_data is None
        else weight_data.to_torch().to(torch.float32).flatten()
    )
    if len(targets) != len(tokens) or len(weights) != len(tokens):
        raise InvalidDatum(
            f"datum {index}: target_tokens ({len(targets)}) and weights ({len(weights)}) "
            f"must have one entry per input token ({len(tokens)})"
        )
    # a NaN weight would make every LoRA weight NaN at the next optim_step
    return _Row(tokens, targets, _finite(index, "weights", weights), None)


def _rl_row(
    index: int,
    datum: types.Datum,
    tokens: list[int],
    loss_fn: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
) -> _Row:
    """An RL datum: ``target_tokens``, sampling ``logprobs`` and ``advantages``, each of shape
    (N,) for N input tokens, and optionally ``weights``; nothing else."""
    given = set(datum.loss_fn_inputs)
    accepted = {"target_tokens", *required}
    missing = sorted(accepted - given)
    if missing:
        raise InvalidDatum(
            f"datum {index} lacks loss_fn_inputs {missing}; {loss_fn} needs "
            f"{', '.join(sorted(accepted))}"
        )
    unknown = sorted(given - accepted - set(optional))
    if unknown:
        raise InvalidDatum(
            f"datum {index} has loss_fn_inputs {unknown} that {loss_fn} does not take; it takes "
            f"{', '.join(sorted(accepted | set(optional)))}"
        )
    n = len(tokens)
    targets = _vector(index, datum, "target_tokens", n).to(torch.int64)
    sampling_logprobs = _finite(index, "logprobs", _vector(index, datum, "logprobs", n))
    advantages = _finite(index, "advantages", _vector(index, datum, "advantages", n))
    weights = (
        torch.ones(n)
        if "weights" not in given
        else _finite(index, "weights", _vector(index, datum, "weights", n))
    )
    return _Row(tokens, targets, weights, (sampling_logprobs, advantages))


def _vector(index: int, datum: types.Datum, name: str, n: int) -> torch.Tensor:
    tensor = datum.loss_fn_inputs[name].to_torch()
    if tuple(tensor.shape) != (n,):
        raise InvalidDatum(
            f"datum {index}: loss_fn_inputs[{name!r}] has shape {list(tensor.shape)}; it must "
            f"have one entry per input token, shape [{n}]"
        )
    return tensor if name == "target_tokens" else tensor.to(torch.float32)


def _finite(index: int, name: str, tensor: torch.Tensor) -> torch.Tensor:
    if not bool(torch.isfinite(tensor).all()):
        raise InvalidDatum(f"datum {index}: loss_fn_inputs[{name!r}] has non-finite values")
    return tensor
