"""Learning-rate schedules (properties over all steps, totals and warmups)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.recipes import BatchPlan, learning_rate

schedules = st.sampled_from(["constant", "linear", "cosine"])


@settings(deadline=None)
@given(
    total=st.integers(1, 500),
    warmup=st.integers(0, 600),
    base=st.floats(1e-6, 1.0),
    schedule=schedules,
)
def test_rates_stay_in_range_rise_in_warmup_and_never_rise_after(
    total: int, warmup: int, base: float, schedule: str
) -> None:
    rates = [learning_rate(s, total, base, schedule, warmup) for s in range(total)]  # type: ignore[arg-type]
    assert all(0 < r <= base * (1 + 1e-12) for r in rates)
    cut = min(warmup, total)
    assert all(a < b for a, b in itertools.pairwise(rates[:cut]))
    after = rates[cut:]
    assert all(a >= b - 1e-15 for a, b in itertools.pairwise(after))
    if warmup and warmup <= total:
        assert math.isclose(rates[warmup - 1], base)


def test_shapes() -> None:
    assert learning_rate(0, 10, 1.0, "constant") == 1.0
    assert learning_rate(5, 10, 1.0, "linear") == 0.5
    assert learning_rate(5, 10, 1.0, "cosine") == pytest.approx(0.5)
    assert learning_rate(0, 10, 1.0, "linear", warmup_steps=4) == 0.25
    with pytest.raises(ValueError, match="step must be in"):
        learning_rate(10, 10, 1.0)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        learning_rate(0, 10, 1.0, "step")  # type: ignore[arg-type]


@settings(deadline=None)
@given(
    examples=st.integers(1, 60),
    batch_size=st.integers(1, 16),
    epochs=st.integers(1, 3),
    seed=st.integers(0, 5),
)
def test_each_epoch_sees_distinct_examples_in_a_seeded_order(
    examples: int, batch_size: int, epochs: int, seed: int
) -> None:
    plan = BatchPlan(examples, batch_size, epochs, seed=seed)
    items = list(range(examples))
    for epoch in range(epochs):
        steps = range(epoch * plan.batches_per_epoch + 1, (epoch + 1) * plan.batches_per_epoch + 1)
        seen = [i for step in steps for i in plan.batch(items, step)]
        assert len(seen) == len(set(seen)) == min(examples, plan.batches_per_epoch * batch_size)
        assert all(plan.position(step)[0] == epoch for step in steps)
    again = BatchPlan(examples, batch_size, epochs, seed=seed)
    assert [again.batch(items, s) for s in range(1, plan.total_steps + 1)] == [
        plan.batch(items, s) for s in range(1, plan.total_steps + 1)
    ]


def test_max_steps_caps_the_plan() -> None:
    assert BatchPlan(100, 10, 3).total_steps == 30
    assert BatchPlan(100, 10, 3, max_steps=7).total_steps == 7
    assert BatchPlan(5, 10, 2).total_steps == 2  # fewer examples than a batch: one per epoch
