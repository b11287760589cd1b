"""Anomaly detectors over a window of values (z-score, MAD, IQR) and over a live stream
(z-score, IQR). For MAD on a stream, run `mad_anomalies` on a window such as `last_n`.

Every detector returns the flagged points as `Anomaly(index, value, score)`, with `index` the
position in the input and a signed `score` (positive above the centre, negative below), so a
caller can rank, plot or explain what was flagged. Non-finite values are skipped, neither
flagged nor used to estimate the centre and spread (the crucible.stats policy).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import msgspec
import numpy as np
from attrs import define, field

from ._running import RunningStats, _as_float_array
from ._sketch import QuantileSketch

#: 0.6745 is the 0.75 quantile of the standard normal: it makes the MAD a consistent
#: estimator of the standard deviation (Iglewicz & Hoaglin's modified z-score).
_MAD_TO_SIGMA = 0.6745
#: sqrt(pi/2): mean absolute deviation -> standard deviation for normal data, the fallback
#: when more than half of the values are identical and the MAD is 0.
_MEAN_AD_TO_SIGMA = 1.2533141373155003


class Anomaly(msgspec.Struct, frozen=True):
    """One flagged point: its position in the input, its value and its signed score."""

    index: int
    value: float
    score: float


def zscore_anomalies(
    values: Iterable[float] | np.ndarray[Any, Any], threshold: float = 3.0
) -> list[Anomaly]:
    """Points with |x - mean| / std > `threshold` (std with ddof=1).

    The classic rule, but the mean and std are themselves pulled by the outliers, and with n
    points no |z| can exceed (n - 1)/sqrt(n) (so nothing is flagged at 3.0 below 11 points):
    prefer `mad_anomalies` for small or contaminated windows. Constant data flags nothing.
    """
    _check_positive("threshold", threshold)
    indices, array = _finite(values)
    if array.size < 2:
        return []
    stats = RunningStats.of(array)
    std = stats.std()
    if not std:
        return []
    assert stats.mean is not None  # non-empty
    with np.errstate(over="ignore"):  # a subnormal std: infinite scores, honestly
        scores = (array - stats.mean) / std
    return _flag(indices, array, scores, threshold)


def mad_anomalies(
    values: Iterable[float] | np.ndarray[Any, Any], threshold: float = 3.5
) -> list[Anomaly]:
    """Points whose modified z-score 0.6745 * (x - median) / MAD exceeds `threshold`.

    Iglewicz & Hoaglin's robust rule (3.5 is their recommended cut-off): median and MAD are
    barely moved by the outliers they are looking for. When the MAD is 0 (over half the points
    identical) the mean absolute deviation stands in for it; if that is 0 too, nothing is
    flagged.
    """
    _check_positive("threshold", threshold)
    indices, array = _finite(values)
    if array.size == 0:
        return []
    median = float(np.median(array))
    deviations = array - median
    mad = float(np.median(np.abs(deviations)))
    if mad > 0:
        spread = mad / _MAD_TO_SIGMA
    else:
        spread = _MEAN_AD_TO_SIGMA * float(np.mean(np.abs(deviations)))
        if spread == 0:
            return []
    with np.errstate(over="ignore"):  # a subnormal spread: infinite scores, honestly
        scores = deviations / spread
    return _flag(indices, array, scores, threshold)


def iqr_anomalies(values: Iterable[float] | np.ndarray[Any, Any], k: float = 1.5) -> list[Anomaly]:
    """Tukey's fences: points below Q1 - k*IQR or above Q3 + k*IQR (k=3 for "far out").

    Quartiles are exact percentiles (linear interpolation). The score is the distance past
    the nearer quartile in IQR units (so flagged points have |score| > k); when the IQR is 0,
    any point off the quartiles is flagged with an infinite score.
    """
    _check_positive("k", k)
    indices, array = _finite(values)
    if array.size == 0:
        return []
    q1, q3 = (float(q) for q in np.percentile(array, [25.0, 75.0]))
    iqr = q3 - q1
    distance = np.where(array > q3, array - q3, np.where(array < q1, array - q1, 0.0))
    if iqr > 0:
        with np.errstate(over="ignore"):
            scores = distance / iqr
    else:
        scores = np.where(distance == 0, 0.0, np.copysign(np.inf, distance))
    return _flag(indices, array, scores, k)


@define
class StreamingZScore:
    """Flags each new value of a live stream against the values before it.

    `observe(x)` scores x with the running mean and sample std of everything seen so far,
    then folds x in (so a lasting level shift stops being flagged once it dominates). Nothing
    is flagged until `warmup` values have been seen: the spread of a handful of points says
    nothing. O(1) memory; NaN/inf are skipped and counted by `stats.nonfinite`.
    """

    threshold: float = 3.0
    warmup: int = 30
    stats: RunningStats = field(factory=RunningStats)
    _seen: int = field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        _check_positive("threshold", self.threshold)
        if self.warmup < 2:
            raise ValueError(f"warmup must be >= 2 (a spread needs two points), got {self.warmup}")

    def observe(self, x: float) -> Anomaly | None:
        """Score `x` against the stream so far, fold it in, and return it if anomalous."""
        index = self._seen
        self._seen += 1
        ready = self.stats.count >= self.warmup
        mean, std = self.stats.mean, self.stats.std()
        self.stats.update(x)  # validates x; NaN/inf only bump stats.nonfinite
        if not ready or mean is None or not std or not math.isfinite(x):
            return None
        score = (x - mean) / std
        if abs(score) <= self.threshold:
            return None
        return Anomaly(index=index, value=float(x), score=score)


@define
class StreamingIQR:
    """Tukey's fences over a live stream, with quartiles from a `QuantileSketch`.

    `observe(x)` checks x against Q1 - k*IQR and Q3 + k*IQR of everything seen before it, then
    adds x. Memory stays bounded (the sketch); the quartiles are the sketch's inverted-CDF
    estimates (exact for the first few hundred values), so scores can differ slightly from
    `iqr_anomalies` on the same values. Nothing is flagged during the `warmup`; NaN/inf are
    skipped and counted by `sketch.nonfinite`.
    """

    k: float = 1.5
    warmup: int = 30
    sketch: QuantileSketch = field(factory=QuantileSketch)
    _seen: int = field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        _check_positive("k", self.k)
        if self.warmup < 4:
            raise ValueError(
                f"warmup must be >= 4 (quartiles need a few points), got {self.warmup}"
            )

    def observe(self, x: float) -> Anomaly | None:
        """Score `x` against the stream so far, add it, and return it if outside the fences."""
        index = self._seen
        self._seen += 1
        ready = self.sketch.count >= self.warmup
        q1, q3 = self.sketch.quantile(0.25), self.sketch.quantile(0.75)
        self.sketch.update(x)  # validates x; NaN/inf only bump sketch.nonfinite
        if not ready or q1 is None or q3 is None or not math.isfinite(x):
            return None
        iqr = q3 - q1
        distance = x - q3 if x > q3 else x - q1 if x < q1 else 0.0
        if distance == 0.0:
            return None
        score = distance / iqr if iqr > 0 else math.copysign(math.inf, distance)
        if abs(score) <= self.k:
            return None
        return Anomaly(index=index, value=float(x), score=score)


def _finite(
    values: Iterable[float] | np.ndarray[Any, Any],
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    array = _as_float_array(values)
    finite = np.isfinite(array)
    return np.flatnonzero(finite), array[finite]


def _flag(
    indices: np.ndarray[Any, Any],
    array: np.ndarray[Any, Any],
    scores: np.ndarray[Any, Any],
    threshold: float,
) -> list[Anomaly]:
    flagged = np.flatnonzero(np.abs(scores) > threshold)
    return [
        Anomaly(index=int(indices[i]), value=float(array[i]), score=float(scores[i]))
        for i in flagged
    ]


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
