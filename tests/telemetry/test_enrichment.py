import math
from typing import Any

import pytest

from crucible import telemetry
from crucible.telemetry import Experiment, ModelPrice, PriceTable

EXPERIMENT = Experiment(
    id="0123456789abcdef",
    name="lr-sweep",
    condition="treatment",
    tags=("a", "b"),
    started_at=1,
)


def enrich(
    name: str = "req_llm.request.stop",
    measurements: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    prices: PriceTable | None = None,
) -> telemetry.TelemetryEvent:
    return telemetry.enrich(
        name,
        measurements or {},
        metadata or {},
        EXPERIMENT,
        timestamp_us=1_700_000_000_000_000,
        prices=prices or PriceTable(),
    )


def test_identity_and_experiment_context() -> None:
    event = enrich(measurements={"x": 1}, metadata={"m": 2})
    assert len(event.event_id) == 32
    int(event.event_id, 16)
    assert event.event_id != enrich().event_id
    assert event.event_name == "req_llm.request.stop"
    assert event.timestamp == 1_700_000_000_000_000
    assert (event.experiment_id, event.experiment_name) == ("0123456789abcdef", "lr-sweep")
    assert (event.condition, event.tags) == ("treatment", ("a", "b"))
    assert (event.measurements, event.metadata) == ({"x": 1}, {"m": 2})


def test_recorded_payload_is_a_copy() -> None:
    metadata: dict[str, Any] = {"model": "a"}
    event = enrich(metadata=metadata)
    metadata["model"] = "b"
    assert event.metadata == {"model": "a"}


def test_latency_from_duration_then_stop_minus_start() -> None:
    assert enrich(measurements={"duration": 2_500_000}).latency_ms == 2.5
    assert enrich(measurements={"start": 1_000_000, "stop": 4_000_000}).latency_ms == 3.0
    both = {"duration": 1_000_000, "start": 0, "stop": 9_000_000}
    assert enrich(measurements=both).latency_ms == 1.0
    assert enrich(measurements={"start": 1}).latency_ms is None
    assert enrich(measurements={"duration": "slow"}).latency_ms is None
    assert enrich(measurements={"duration": math.nan}).latency_ms is None


@pytest.mark.parametrize(
    ("model", "input_price", "output_price"),
    [
        ("gpt-4", 30, 60),
        ("gpt-4-turbo", 10, 30),
        ("gpt-3.5-turbo", 0.5, 1.5),
        ("claude-3-opus", 15, 75),
        ("claude-3-sonnet", 3, 15),
        ("gemini-2.0-flash-exp", 0.075, 0.3),
        ("some-local-model", 1, 2),
    ],
)
def test_cost_from_tokens_and_the_price_table(
    model: str, input_price: float, output_price: float
) -> None:
    tokens = {"prompt": 1_000, "completion": 3_000}
    event = enrich(metadata={"model": model, "tokens": tokens})
    expected = (1_000 * input_price + 3_000 * output_price) / 1_000_000
    assert event.cost_usd == pytest.approx(expected)


def test_cost_precedence() -> None:
    tokens = {"prompt": 1_000_000, "completion": 0}
    # Explicit metadata cost wins over tokens, which win over the measurement.
    assert enrich(metadata={"cost": 0.5, "model": "gpt-4", "tokens": tokens}).cost_usd == 0.5
    with_tokens = enrich(measurements={"cost": 7.0}, metadata={"model": "gpt-4", "tokens": tokens})
    assert with_tokens.cost_usd == pytest.approx(30.0)
    assert enrich(measurements={"cost": 7.0}).cost_usd == 7.0
    assert enrich(metadata={"tokens": tokens}).cost_usd is None  # no model, no price
    assert enrich(metadata={"cost": "free"}).cost_usd is None


def test_price_table_is_configurable_and_frozen() -> None:
    prices = {"mine": ModelPrice(2.0, 4.0)}
    table = PriceTable(prices, default=ModelPrice(0.0, 0.0))
    prices["mine"] = ModelPrice(100.0, 100.0)  # a later change of the caller's dict
    metadata = {"model": "mine", "tokens": {"prompt": 500_000, "completion": 500_000}}
    assert enrich(metadata=metadata, prices=table).cost_usd == pytest.approx(3.0)
    other = {"model": "gpt-4", "tokens": {"prompt": 10, "completion": 10}}
    assert enrich(metadata=other, prices=table).cost_usd == 0.0


@pytest.mark.parametrize(
    ("name", "measurements", "metadata", "expected"),
    [
        ("a.stop", {}, {"error": "timeout"}, False),
        ("a.stop", {"status": "ok"}, {"exception": "boom"}, False),
        ("a.exception", {}, {"kind": "KeyError"}, False),
        ("a.stop", {"status": "ok"}, {}, True),
        ("a.stop", {"status": "error"}, {"response": "x"}, False),
        ("a.stop", {}, {"response": "hello"}, True),
        ("a.stop", {}, {"response": None}, None),
        ("a.stop", {}, {}, None),
        ("a.stop", {"status": "maybe"}, {}, None),
    ],
)
def test_success(
    name: str, measurements: dict[str, Any], metadata: dict[str, Any], expected: bool | None
) -> None:
    assert enrich(name, measurements, metadata).success is expected


def test_copied_context_fields() -> None:
    metadata = {
        "session_id": "s",
        "user_id": "u",
        "sample_id": 7,
        "cohort": "c",
        "model": "gpt-4",
        "provider": "openai",
    }
    event = enrich(metadata=metadata)
    assert (event.session_id, event.user_id, event.sample_id) == ("s", "u", 7)
    assert (event.cohort, event.model, event.provider) == ("c", "gpt-4", "openai")


def test_training_fields() -> None:
    event = enrich(
        "crucible_train.batch.stop",
        {"loss": 1.5, "accuracy": 0.5, "learning_rate": 1e-4, "gradient_norm": 2.0},
        {"epoch": 1, "batch": 20, "checkpoint_path": "/ckpt/1"},
    )
    assert (event.epoch, event.batch, event.loss, event.accuracy) == (1, 20, 1.5, 0.5)
    assert (event.learning_rate, event.gradient_norm) == (1e-4, 2.0)
    assert event.checkpoint_path == "/ckpt/1"


def test_malformed_training_values_become_none() -> None:
    event = enrich(
        "crucible_train.batch.stop",
        {"loss": math.inf, "accuracy": "high", "learning_rate": True},
        {"epoch": 1.5, "batch": "x", "checkpoint_path": 3},
    )
    assert (event.epoch, event.batch, event.loss, event.accuracy) == (None, None, None, None)
    assert (event.learning_rate, event.checkpoint_path) == (None, None)
