"""Exact percentiles: linear interpolation at index p/100 * (n - 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.stats import InvalidValueError, percentile, percentiles

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


def interpolate_by_hand(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = p / 100 * (len(ordered) - 1)
    low = math.floor(index)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


@settings(deadline=None)  # timing is for bench/, not for tests on a busy CI
@given(st.lists(finite, min_size=1, max_size=50), st.floats(min_value=0, max_value=100))
def test_matches_linear_interpolation_by_hand(values: list[float], p: float) -> None:
    expected = interpolate_by_hand(values, p)
    result = percentile(values, p)
    assert result is not None
    assert result == pytest.approx(expected, rel=1e-9, abs=1e-6)
    assert min(values) <= result <= max(values)


def test_known_values() -> None:
    data = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert percentile(data, 0) == 15.0
    assert percentile(data, 100) == 50.0
    assert percentile(data, 50) == 35.0
    assert percentile(data, 40) == 29.0  # index 1.6: 20 + 0.6 * 15
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5


def test_empty_or_all_nonfinite_gives_none() -> None:
    assert percentile([], 50) is None
    assert percentile([math.nan, math.inf], 99) is None
    assert percentiles([], [50, 99]) == {50: None, 99: None}


def test_nonfinite_values_are_left_out() -> None:
    assert percentile([1.0, math.nan, 3.0, math.inf, -math.inf], 50) == 2.0


def test_several_at_once_match_single_calls() -> None:
    data = np.random.default_rng(3).lognormal(size=101)
    many = percentiles(data, [50, 90, 95, 99])
    assert many == {p: percentile(data, p) for p in (50, 90, 95, 99)}


@pytest.mark.parametrize("p", [-0.1, 100.5, math.nan])
def test_out_of_range_p_is_refused(p: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], p)


def test_non_numbers_are_refused() -> None:
    with pytest.raises(InvalidValueError):
        percentile(["a", "b"], 50)
