"""Enrichment: turn an emitted (name, measurements, metadata) into a TelemetryEvent.

Every computed field tolerates bad input: a value of the wrong type or a non-finite number
yields None for that field instead of an error, so one malformed event never stops recording.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from crucible.telemetry._event import Experiment, TelemetryEvent

__all__ = ["DEFAULT_PRICES", "ModelPrice", "PriceTable", "enrich"]


@attrs.frozen
class ModelPrice:
    """USD per one million tokens."""

    input: float
    output: float


DEFAULT_PRICES: Mapping[str, ModelPrice] = MappingProxyType(
    {
        "gpt-4": ModelPrice(30.0, 60.0),
        "gpt-4-turbo": ModelPrice(10.0, 30.0),
        "gpt-3.5-turbo": ModelPrice(0.5, 1.5),
        "claude-3-opus": ModelPrice(15.0, 75.0),
        "claude-3-sonnet": ModelPrice(3.0, 15.0),
        "gemini-2.0-flash-exp": ModelPrice(0.075, 0.3),
    }
)


def _frozen_prices(prices: Mapping[str, ModelPrice]) -> Mapping[str, ModelPrice]:
    # A read-only copy: changing the caller's dict later must not change recorded costs.
    return MappingProxyType(dict(prices))


@attrs.frozen
class PriceTable:
    """Per-model token prices; models not listed cost ``default``."""

    prices: Mapping[str, ModelPrice] = attrs.field(default=DEFAULT_PRICES, converter=_frozen_prices)
    default: ModelPrice = ModelPrice(1.0, 2.0)

    def price_for(self, model: str) -> ModelPrice:
        return self.prices.get(model, self.default)

    def cost(self, model: str, prompt_tokens: float, completion_tokens: float) -> float:
        price = self.price_for(model)
        return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


def _number(value: Any) -> float | None:
    """A finite real number, else None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _integer(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def latency_ms(measurements: Mapping[str, Any]) -> float | None:
    """From ``duration`` (ns), else ``stop - start`` (ns); None if neither is usable."""
    duration = _number(measurements.get("duration"))
    if duration is not None:
        return duration / 1_000_000
    start, stop = _number(measurements.get("start")), _number(measurements.get("stop"))
    if start is not None and stop is not None:
        return (stop - start) / 1_000_000
    return None


def cost_usd(
    measurements: Mapping[str, Any], metadata: Mapping[str, Any], prices: PriceTable
) -> float | None:
    """Metadata ``cost``, else metadata ``tokens`` x the price of metadata ``model``,
    else the ``cost`` measurement; None if none is usable."""
    explicit = _number(metadata.get("cost"))
    if explicit is not None:
        return explicit
    tokens, model = metadata.get("tokens"), metadata.get("model")
    if isinstance(tokens, Mapping) and isinstance(model, str):
        prompt = _number(tokens.get("prompt", 0))
        completion = _number(tokens.get("completion", 0))
        if prompt is not None and completion is not None:
            return prices.cost(model, prompt, completion)
    return _number(measurements.get("cost"))


def success(
    event_name: str, measurements: Mapping[str, Any], metadata: Mapping[str, Any]
) -> bool | None:
    """False on an error/exception (in metadata, or an ``*.exception`` event), else the
    ``status`` measurement (ok/error), else True if a response is present, else None."""
    if metadata.get("error") or metadata.get("exception") or event_name.endswith(".exception"):
        return False
    status = measurements.get("status")
    if status == "ok":
        return True
    if status == "error":
        return False
    if metadata.get("response") is not None:
        return True
    return None


def _pick(measurements: Mapping[str, Any], metadata: Mapping[str, Any], key: str) -> Any:
    # Training values are measurements by convention, but accept them as metadata too.
    value = measurements.get(key)
    return metadata.get(key) if value is None else value


def enrich(
    event_name: str,
    measurements: Mapping[str, Any],
    metadata: Mapping[str, Any],
    experiment: Experiment,
    *,
    timestamp_us: int,
    prices: PriceTable,
) -> TelemetryEvent:
    """Build the recorded event. Measurements and metadata are copied, so an emitter that
    reuses its dicts cannot change what was recorded."""

    def pick(key: str) -> Any:
        return _pick(measurements, metadata, key)

    return TelemetryEvent(
        event_id=secrets.token_hex(16),
        event_name=event_name,
        timestamp=timestamp_us,
        experiment_id=experiment.id,
        experiment_name=experiment.name,
        condition=experiment.condition,
        tags=experiment.tags,
        measurements=dict(measurements),
        metadata=dict(metadata),
        latency_ms=latency_ms(measurements),
        cost_usd=cost_usd(measurements, metadata, prices),
        success=success(event_name, measurements, metadata),
        session_id=metadata.get("session_id"),
        user_id=metadata.get("user_id"),
        sample_id=metadata.get("sample_id"),
        cohort=metadata.get("cohort"),
        model=metadata.get("model"),
        provider=metadata.get("provider"),
        epoch=_integer(pick("epoch")),
        batch=_integer(pick("batch")),
        loss=_number(pick("loss")),
        accuracy=_number(pick("accuracy")),
        learning_rate=_number(pick("learning_rate")),
        gradient_norm=_number(pick("gradient_norm")),
        checkpoint_path=_text(pick("checkpoint_path")),
    )
