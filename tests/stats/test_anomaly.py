"""Anomaly detectors: z-score, MAD, IQR over a window; z-score over a live stream."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crucible.stats import (
    Anomaly,
    StreamingIQR,
    StreamingZScore,
    iqr_anomalies,
    mad_anomalies,
    zscore_anomalies,
)

values_strategy = st.lists(
    st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
    | st.sampled_from([math.nan, math.inf]),
    max_size=60,
)
DETECTORS = [zscore_anomalies, mad_anomalies, iqr_anomalies]


def flagged(anomalies: list[Anomaly]) -> set[int]:
    return {a.index for a in anomalies}


def finite_positions(values: list[float]) -> tuple[list[int], np.ndarray]:
    positions = [i for i, x in enumerate(values) if math.isfinite(x)]
    return positions, np.asarray([values[i] for i in positions], dtype=np.float64)


def assert_matches_oracle(
    anomalies: list[Anomaly], values: list[float], scores: np.ndarray, cut: float
) -> None:
    positions, finite = finite_positions(values)
    # Points within rounding of the cut-off may fall either way; everything else must agree.
    assume(not np.any(np.isclose(np.abs(scores), cut, rtol=1e-9, atol=1e-12)))
    expected = [i for i, s in zip(positions, scores, strict=True) if abs(s) > cut]
    assert [a.index for a in anomalies] == expected
    by_index = dict(zip(positions, zip(finite, scores, strict=True), strict=True))
    for a in anomalies:
        value, score = by_index[a.index]
        assert a.value == value
        assert a.score == pytest.approx(score, rel=1e-9, abs=1e-9)


@settings(deadline=None)  # timing is for bench/, not for tests on a busy CI
@given(values_strategy, st.floats(min_value=0.5, max_value=4.0))
def test_zscore_matches_numpy(values: list[float], threshold: float) -> None:
    _, finite = finite_positions(values)
    result = zscore_anomalies(values, threshold)
    if finite.size < 2 or np.std(finite, ddof=1) == 0:
        assert result == []
        return
    scores = (finite - finite.mean()) / np.std(finite, ddof=1)
    assume(np.std(finite, ddof=1) > 1e-6 * (np.max(np.abs(finite)) + 1))
    assert_matches_oracle(result, values, scores, threshold)


@settings(deadline=None)
@given(values_strategy, st.floats(min_value=0.5, max_value=5.0))
def test_mad_matches_the_modified_zscore(values: list[float], threshold: float) -> None:
    _, finite = finite_positions(values)
    result = mad_anomalies(values, threshold)
    if finite.size == 0:
        assert result == []
        return
    median = np.median(finite)
    mad = np.median(np.abs(finite - median))
    assume(mad > 1e-6)  # the MAD == 0 fallback has its own example below
    scores = 0.6745 * (finite - median) / mad
    assert_matches_oracle(result, values, scores, threshold)


@settings(deadline=None)
@given(values_strategy, st.floats(min_value=0.5, max_value=3.0))
def test_iqr_matches_tukeys_fences(values: list[float], k: float) -> None:
    positions, finite = finite_positions(values)
    result = iqr_anomalies(values, k)
    if finite.size == 0:
        assert result == []
        return
    q1, q3 = np.percentile(finite, [25, 75])
    iqr = q3 - q1
    assume(iqr > 1e-6)
    low, high = q1 - k * iqr, q3 + k * iqr
    assume(not np.any(np.isclose(finite, low) | np.isclose(finite, high)))
    expected = [i for i, x in zip(positions, finite, strict=True) if x < low or x > high]
    assert [a.index for a in result] == expected
    for a in result:
        assert abs(a.score) > k
        assert (a.score > 0) == (a.value > q3)


@pytest.mark.parametrize("detector", DETECTORS)
def test_a_planted_spike_is_flagged_with_its_position_and_sign(detector) -> None:  # type: ignore[no-untyped-def]
    values = list(np.random.default_rng(11).normal(50.0, 2.0, 200))
    values[137] = 500.0
    values[20] = -400.0
    result = detector(values)
    found = {a.index: a for a in result}
    assert 137 in found
    assert 20 in found
    assert found[137].value == 500.0
    assert found[137].score > 0
    assert found[20].score < 0
    assert len(result) <= 6  # a handful of 3-sigma-ish normal points at most


@pytest.mark.parametrize("detector", DETECTORS)
def test_constant_or_empty_windows_flag_nothing(detector) -> None:  # type: ignore[no-untyped-def]
    assert detector([]) == []
    assert detector([7.0] * 20) == []
    assert detector([math.nan, math.inf]) == []


@pytest.mark.parametrize("detector", DETECTORS)
def test_nonfinite_values_are_skipped_and_indices_stay_positions(detector) -> None:  # type: ignore[no-untyped-def]
    base = [9.0 + 0.2 * i for i in range(11)]
    with_gaps = [math.nan, *base[:5], math.inf, *base[5:], 1_000.0]
    result = detector(with_gaps)
    assert [a.index for a in result] == [len(with_gaps) - 1]


def test_zscore_cannot_flag_in_tiny_windows_but_mad_can() -> None:
    tiny = [10.0, 10.1, 9.9, 10.0, 100.0]
    assert zscore_anomalies(tiny) == []  # max |z| with 5 points is 4/sqrt(5) < 3
    assert flagged(mad_anomalies(tiny)) == {4}


def test_mad_falls_back_to_mean_absolute_deviation_when_mad_is_zero() -> None:
    values = [5.0] * 10 + [5.5, 50.0]
    result = mad_anomalies(values)
    assert flagged(result) == {11}
    mean_ad = (0.5 + 45.0) / 12
    assert result[0].score == pytest.approx(45.0 / (1.2533141373155003 * mean_ad))


def test_iqr_with_zero_spread_flags_any_departure_with_infinite_score() -> None:
    result = iqr_anomalies([5.0] * 9 + [6.0])
    assert result == [Anomaly(index=9, value=6.0, score=math.inf)]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: zscore_anomalies([1.0], 0), "threshold"),
        (lambda: mad_anomalies([1.0], -1), "threshold"),
        (lambda: iqr_anomalies([1.0], 0), "k"),
        (lambda: StreamingZScore(threshold=0), "threshold"),
        (lambda: StreamingZScore(warmup=1), "warmup"),
        (lambda: StreamingIQR(k=0), "k"),
        (lambda: StreamingIQR(warmup=3), "warmup"),
    ],
)
def test_bad_parameters_are_refused(call, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=name):
        call()


# -- streaming -------------------------------------------------------------------------------


@settings(deadline=None)
@given(
    st.lists(st.floats(min_value=-1e3, max_value=1e3), max_size=80),
    st.integers(2, 20),
    st.floats(min_value=0.5, max_value=3.0),
)
def test_streaming_scores_each_value_against_its_prefix(
    values: list[float], warmup: int, threshold: float
) -> None:
    detector = StreamingZScore(threshold=threshold, warmup=warmup)
    results = [detector.observe(x) for x in values]
    for i, (x, result) in enumerate(zip(values, results, strict=True)):
        prefix = np.asarray(values[:i])
        std = float(np.std(prefix, ddof=1)) if len(prefix) >= 2 else 0.0
        if len(prefix) < warmup or std <= 1e-6 * (float(np.max(np.abs(prefix))) + 1):
            if len(prefix) < warmup:
                assert result is None
            continue
        score = (x - float(prefix.mean())) / std
        if math.isclose(abs(score), threshold, rel_tol=1e-6):
            continue
        if abs(score) > threshold:
            assert result is not None
            assert result.index == i
            assert result.score == pytest.approx(score, rel=1e-6, abs=1e-9)
        else:
            assert result is None
    assert detector.stats.count == len(values)


def test_streaming_flags_a_spike_after_warmup_and_skips_nonfinite() -> None:
    detector = StreamingZScore(warmup=30)
    stream = list(np.random.default_rng(5).normal(0.0, 1.0, 100))
    spike_early, spike_late = 5, 80
    stream[spike_early] = 50.0
    stream[spike_late] = 50.0
    stream.insert(60, math.nan)  # shifts the late spike to 81
    results = [detector.observe(x) for x in stream]
    hits = {r.index for r in results if r is not None}
    assert spike_late + 1 in hits
    assert spike_early not in hits  # still warming up
    assert detector.stats.nonfinite == 1


def inverted_cdf(values: list[float], rank: float) -> float:
    # The sketch's quartiles while it is exact: float32 values, inverted-CDF quantile.
    data = np.asarray(values, dtype=np.float32).astype(np.float64)
    return float(np.quantile(data, rank, method="inverted_cdf"))


@settings(deadline=None)
@given(
    st.lists(st.integers(-1_000, 1_000).map(float), max_size=120),
    st.integers(4, 20),
    st.floats(min_value=0.5, max_value=3.0),
)
def test_streaming_iqr_checks_each_value_against_the_fences_before_it(
    values: list[float], warmup: int, k: float
) -> None:
    detector = StreamingIQR(k=k, warmup=warmup)
    for i, x in enumerate(values):
        result = detector.observe(x)
        prefix = values[:i]
        if len(prefix) < warmup:
            assert result is None
            continue
        q1, q3 = inverted_cdf(prefix, 0.25), inverted_cdf(prefix, 0.75)
        iqr = q3 - q1
        low, high = q1 - k * iqr, q3 + k * iqr
        if math.isclose(x, low) or math.isclose(x, high):
            continue
        if x < low or x > high:
            assert result is not None
            assert result.index == i
            assert (result.score > 0) == (x > q3)
            assert abs(result.score) > k
        else:
            assert result is None
    assert detector.sketch.count == len(values)


def test_streaming_iqr_flags_a_spike_on_a_long_stream_in_bounded_memory() -> None:
    detector = StreamingIQR()
    stream = list(np.random.default_rng(9).lognormal(3.0, 0.3, 5_000))
    stream[4_000] = 10_000.0
    stream.insert(100, math.nan)
    hits = [r for r in map(detector.observe, stream) if r is not None]
    assert 4_001 in {h.index for h in hits}
    assert len(hits) < 100  # the lognormal's own upper tail, not a flood
    assert detector.sketch.nonfinite == 1
    assert not detector.sketch.is_exact  # compacted: memory stayed bounded
