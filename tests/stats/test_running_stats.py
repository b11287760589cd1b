"""RunningStats: Welford updates, vectorised batches, Chan merge, checkpoints."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.stats import InvalidStateError, InvalidValueError, RunningStats, RunningStatsState

# Bounded magnitudes keep float error analysable: the tolerances below scale with them.
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
batches = st.lists(finite, max_size=60)


def assert_same_stats(a: RunningStats, b: RunningStats, scale: float, nonfinite: int = 0) -> None:
    """Equal up to rounding; `nonfinite` is how many more NaN/inf `a` saw than `b`."""
    assert a.count == b.count
    assert a.nonfinite == b.nonfinite + nonfinite
    assert a.min == b.min
    assert a.max == b.max
    if a.count:
        assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-9 * scale)
        var_a, var_b = a.variance(ddof=0), b.variance(ddof=0)
        assert var_a is not None
        assert var_b is not None
        assert var_a == pytest.approx(var_b, rel=1e-7, abs=1e-9 * scale * scale)


def magnitude(*groups: list[float]) -> float:
    return max((abs(x) for g in groups for x in g), default=1.0) + 1.0


def loop_of_updates(values: list[float]) -> RunningStats:
    stats = RunningStats()
    for x in values:
        stats.update(x)
    return stats


def merged(*parts: RunningStats) -> RunningStats:
    result = RunningStats()
    for part in parts:
        result.merge(part)
    return result


# -- properties ------------------------------------------------------------------------------


@settings(deadline=None)  # timing is for bench/, not for tests on a busy CI
@given(batches)
def test_matches_numpy_mean_and_sample_variance(values: list[float]) -> None:
    stats = loop_of_updates(values)
    scale = magnitude(values)
    assert stats.count == len(values)
    if not values:
        assert stats.mean is None
        assert stats.variance() is None
        return
    assert stats.mean == pytest.approx(float(np.mean(values)), rel=1e-9, abs=1e-9 * scale)
    assert stats.min == min(values)
    assert stats.max == max(values)
    population = float(np.var(values, ddof=0))  # the telemetry analysis uses ddof=0
    assert stats.variance(ddof=0) == pytest.approx(population, rel=1e-7, abs=1e-9 * scale**2)
    if len(values) >= 2:
        expected = float(np.var(values, ddof=1))
        assert stats.variance() == pytest.approx(expected, rel=1e-7, abs=1e-9 * scale**2)
        assert stats.std() == pytest.approx(math.sqrt(expected), rel=1e-6, abs=1e-6 * scale)
    else:
        assert stats.variance() is None  # ddof=1 is undefined for one value
        assert stats.variance(ddof=0) == 0.0


@settings(deadline=None)
@given(batches)
def test_update_many_equals_a_loop_of_update(values: list[float]) -> None:
    batched = RunningStats()
    batched.update_many(np.asarray(values, dtype=np.float64))
    assert_same_stats(batched, loop_of_updates(values), magnitude(values))


def welford_reference(values: list[float]) -> tuple[int, float, float]:
    """Welford's recurrence, value by value, in plain Python: the textbook oracle."""
    n, mean, m2 = 0, 0.0, 0.0
    for x in values:
        n += 1
        delta = x - mean
        mean += delta / n
        m2 += delta * (x - mean)
    return n, mean, m2


@settings(deadline=None, max_examples=40)
@given(
    st.integers(0, 3_500),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1.0, 1e-3, 1e6]),
    st.sampled_from([0.0, 1e6, -1e3]),
)
def test_single_updates_across_buffer_flushes_match_welford_and_numpy(
    n: int, seed: int, scale: float, offset: float
) -> None:
    # update() buffers values and folds them in blocks of 1024: these sizes cross several
    # block boundaries and reads in between, and must still equal the value-by-value Welford.
    values = (np.random.default_rng(seed).normal(offset, scale, n)).tolist()
    stats = RunningStats()
    for i, x in enumerate(values):
        stats.update(x)
        if i % 1_500 == 700:
            assert stats.count == i + 1  # a read mid-stream folds the buffer early
    count, mean, m2 = welford_reference(values)
    assert stats.count == count == n
    if n == 0:
        assert stats.mean is None
        return
    size = abs(offset) + scale
    assert stats.mean == pytest.approx(mean, rel=1e-9, abs=1e-9 * size)
    assert stats.mean == pytest.approx(float(np.mean(values)), rel=1e-9, abs=1e-9 * size)
    assert stats.min == min(values)
    assert stats.max == max(values)
    if n >= 2:
        assert stats.variance(ddof=0) == pytest.approx(m2 / n, rel=1e-6)
        assert stats.variance() == pytest.approx(float(np.var(values, ddof=1)), rel=1e-6)
    batched = RunningStats.of(values)
    assert_same_stats(stats, batched, size)


@settings(deadline=None)
@given(st.lists(batches, max_size=5))
def test_update_many_in_several_batches_equals_one_batch(parts: list[list[float]]) -> None:
    several = RunningStats()
    for part in parts:
        several.update_many(part)
    flat = [x for part in parts for x in part]
    assert_same_stats(several, RunningStats.of(flat), magnitude(flat))


@settings(deadline=None)
@given(batches, batches)
def test_merge_is_commutative(a: list[float], b: list[float]) -> None:
    sa, sb = RunningStats.of(a), RunningStats.of(b)
    assert_same_stats(merged(sa, sb), merged(sb, sa), magnitude(a, b))


@settings(deadline=None)
@given(batches, batches, batches)
def test_merge_is_associative(a: list[float], b: list[float], c: list[float]) -> None:
    sa, sb, sc = RunningStats.of(a), RunningStats.of(b), RunningStats.of(c)
    left = merged(merged(sa, sb), sc)
    right = merged(sa, merged(sb, sc))
    assert_same_stats(left, right, magnitude(a, b, c))


@settings(deadline=None)
@given(batches, batches)
def test_merge_equals_stats_of_the_concatenation(a: list[float], b: list[float]) -> None:
    sa = RunningStats.of(a)
    sa.merge(RunningStats.of(b))
    assert_same_stats(sa, loop_of_updates(a + b), magnitude(a, b))


@settings(deadline=None)
@given(batches, st.lists(st.sampled_from([math.nan, math.inf, -math.inf]), max_size=5))
def test_nonfinite_values_are_counted_apart_and_never_poison(
    values: list[float], bad: list[float]
) -> None:
    mixed = values + bad
    clean = RunningStats.of(values)
    for stats in (loop_of_updates(mixed), RunningStats.of(mixed)):
        assert stats.nonfinite == len(bad)
        assert stats.mean is None or math.isfinite(stats.mean)
        assert_same_stats(stats, clean, magnitude(values), nonfinite=len(bad))


@settings(deadline=None)
@given(batches.map(lambda xs: xs + [math.nan] * (len(xs) % 3)))
def test_state_round_trips_through_json(values: list[float]) -> None:
    stats = RunningStats.of(values)
    restored = RunningStats.from_json(stats.to_json())
    assert restored == stats
    assert RunningStats.from_state(stats.to_state()) == stats


# -- examples --------------------------------------------------------------------------------


def test_a_known_sequence() -> None:
    stats = RunningStats.of([2, 4, 4, 4, 5, 5, 7, 9])
    assert stats.count == 8
    assert stats.mean == 5.0
    assert stats.variance(ddof=0) == 4.0
    assert stats.std(ddof=0) == 2.0
    assert stats.variance() == pytest.approx(32 / 7)
    assert stats.sum == 40.0
    assert (stats.min, stats.max) == (2.0, 9.0)
    assert isinstance(stats.min, float)


def test_empty_stats_report_none() -> None:
    stats = RunningStats()
    assert stats.count == 0
    assert stats.mean is None
    assert stats.min is None
    assert stats.max is None
    assert stats.std() is None
    assert stats.sum == 0.0
    state = stats.to_state()
    assert state.min is None
    assert state.max is None


def test_merging_an_empty_side_changes_nothing() -> None:
    stats = RunningStats.of([1.0, 2.0, 3.0])
    before = stats.copy()
    stats.merge(RunningStats())
    assert stats == before
    empty = RunningStats()
    empty.merge(before)
    assert empty == before


def test_merge_leaves_the_other_side_unchanged_and_copy_is_independent() -> None:
    a, b = RunningStats.of([1.0]), RunningStats.of([5.0, 6.0])
    b_before = b.copy()
    a.merge(b)
    assert b == b_before
    b.update(100.0)
    assert b != b_before


def test_merging_with_itself_doubles_the_stream() -> None:
    stats = RunningStats.of([1.0, 2.0, 3.0, math.nan])
    stats.merge(stats)
    assert_same_stats(stats, RunningStats.of([1.0, 2.0, 3.0, math.nan] * 2), 3.0)


def test_repr_shows_the_statistics() -> None:
    stats = RunningStats()
    stats.update(2.0)  # still buffered: repr must fold it in
    assert repr(stats) == (
        "RunningStats(count=1, mean=2.0, std=None, min=2.0, max=2.0, nonfinite=0)"
    )


def test_large_offset_keeps_variance_accurate() -> None:
    # The naive sum-of-squares formula loses every digit here; Welford and Chan keep them.
    values = [1e9 + x for x in (4.0, 7.0, 13.0, 16.0)]
    assert RunningStats.of(values).variance() == pytest.approx(30.0)
    assert loop_of_updates(values).variance() == pytest.approx(30.0)


def test_update_many_accepts_generators_and_nested_arrays() -> None:
    assert RunningStats.of(float(i) for i in range(5)).mean == 2.0
    assert RunningStats.of(np.arange(6.0).reshape(2, 3)).count == 6


@pytest.mark.parametrize("bad", ["3", None, 1 + 2j, 10**400, [1.0]])
def test_update_refuses_non_numbers_and_leaves_stats_untouched(bad: object) -> None:
    stats = RunningStats.of([1.0, 2.0])
    before = stats.copy()
    with pytest.raises((InvalidValueError, TypeError, ValueError)):
        stats.update(bad)  # type: ignore[arg-type]
    assert stats == before


def test_update_error_names_the_value() -> None:
    with pytest.raises(InvalidValueError, match=r"real number.*str: 'abc'"):
        RunningStats().update("abc")  # type: ignore[arg-type]


def test_update_many_refuses_non_numbers_and_leaves_stats_untouched() -> None:
    stats = RunningStats.of([1.0])
    before = stats.copy()
    with pytest.raises(InvalidValueError, match="real numbers"):
        stats.update_many(["1.0", "x"])
    assert stats == before


def test_merge_refuses_other_types() -> None:
    with pytest.raises(TypeError, match="RunningStats"):
        RunningStats().merge([1.0])  # type: ignore[arg-type]


def test_negative_ddof_is_refused() -> None:
    with pytest.raises(ValueError, match="ddof"):
        RunningStats.of([1.0, 2.0]).variance(ddof=-1)


@pytest.mark.parametrize(
    "state",
    [
        RunningStatsState(count=-1, mean=0.0, m2=0.0, min=None, max=None),
        RunningStatsState(count=2, mean=1.0, m2=-1.0, min=0.0, max=2.0),
        RunningStatsState(count=2, mean=math.nan, m2=1.0, min=0.0, max=2.0),
        RunningStatsState(count=2, mean=1.0, m2=1.0, min=None, max=2.0),
        RunningStatsState(count=2, mean=5.0, m2=1.0, min=0.0, max=2.0),
        RunningStatsState(count=2, mean=1.0, m2=1.0, min=3.0, max=2.0),
        RunningStatsState(count=0, mean=1.0, m2=0.0, min=None, max=None),
        RunningStatsState(count=1, mean=1.0, m2=0.0, min=1.0, max=1.0, nonfinite=-2),
    ],
)
def test_inconsistent_states_are_refused(state: RunningStatsState) -> None:
    with pytest.raises(InvalidStateError, match="refusing RunningStats state"):
        RunningStats.from_state(state)


def test_malformed_json_is_refused() -> None:
    with pytest.raises(InvalidStateError, match="not a RunningStats state"):
        RunningStats.from_json(b'{"count": "many"}')
    with pytest.raises(InvalidStateError):
        RunningStats.from_json(b'{"count": 1, "mean": 1, "m2": 0, "min": 1, "max": 1, "x": 1}')


def test_state_is_a_frozen_msgspec_struct() -> None:
    state = RunningStats.of([1.0, 3.0]).to_state()
    assert msgspec.json.decode(msgspec.json.encode(state), type=RunningStatsState) == state
    with pytest.raises(AttributeError):
        state.count = 5  # type: ignore[misc]


@settings(deadline=None, max_examples=25)
@given(st.lists(st.floats(min_value=-1e300, max_value=1e300), min_size=1, max_size=20))
def test_huge_magnitudes_stay_finite_in_the_mean(values: list[float]) -> None:
    for stats in (RunningStats.of(values), loop_of_updates(values)):
        assert stats.mean is not None
        assert math.isfinite(stats.mean)
