"""Streaming mean/variance/min/max: Welford updates and Chan et al.'s parallel merge."""

from __future__ import annotations

import math
import reprlib
from collections.abc import Iterable
from typing import Any

import msgspec
import numpy as np
from attrs import define, field

from ._errors import InvalidStateError, InvalidValueError


class RunningStatsState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A checkpoint of a `RunningStats`: enough to restore it or merge it elsewhere.

    `min` and `max` are None while `count` is 0 (JSON has no infinities).
    `nonfinite` counts the NaN/±inf values that were seen and left out of every statistic.
    """

    count: int
    mean: float
    m2: float
    min: float | None
    max: float | None
    nonfinite: int = 0


@define
class RunningStats:
    """Count, mean, variance, min and max of a stream, in O(1) memory.

    Single values go through Welford's update; batches (`update_many`) are reduced with numpy
    and folded in with Chan et al.'s parallel formula, which is also what `merge` uses, so a
    stream can be split across processes and recombined.

    Non-finite values (NaN, +inf, -inf) are *counted apart*: they never enter count, mean,
    variance, min or max, and `nonfinite` tells how many were seen. A diverging loss therefore
    shows up as a rising `nonfinite` without poisoning the mean, and a metrics actor fed by many
    producers never crashes on one bad value. Values that are not numbers at all raise
    `InvalidValueError`.
    """

    _count: int = field(default=0, alias="_count")
    _mean: float = field(default=0.0, alias="_mean")
    _m2: float = field(default=0.0, alias="_m2")
    _min: float = field(default=math.inf, alias="_min")
    _max: float = field(default=-math.inf, alias="_max")
    _nonfinite: int = field(default=0, alias="_nonfinite")

    @classmethod
    def of(cls, values: Iterable[float] | np.ndarray[Any, Any]) -> RunningStats:
        """Return the statistics of `values` (a shortcut for `update_many` on a new instance)."""
        stats = cls()
        stats.update_many(values)
        return stats

    # -- reading ---------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """How many finite values were folded in."""
        return self._count

    @property
    def nonfinite(self) -> int:
        """How many NaN/±inf values were seen and left out."""
        return self._nonfinite

    @property
    def mean(self) -> float | None:
        """The arithmetic mean, or None when no finite value was seen."""
        return float(self._mean) if self._count else None

    @property
    def min(self) -> float | None:
        """The smallest finite value, or None when there is none."""
        return float(self._min) if self._count else None

    @property
    def max(self) -> float | None:
        """The largest finite value, or None when there is none."""
        return float(self._max) if self._count else None

    @property
    def sum(self) -> float:
        """The sum of the finite values (count * mean; 0.0 when empty)."""
        return self._mean * self._count

    def variance(self, ddof: int = 1) -> float | None:
        """The variance with `ddof` delta degrees of freedom (1: sample, 0: population).

        None when there are not more than `ddof` values (the estimate is undefined).
        """
        if ddof < 0:
            raise ValueError(f"ddof must be >= 0, got {ddof}")
        if self._count <= ddof:
            return None
        return self._m2 / (self._count - ddof)

    def std(self, ddof: int = 1) -> float | None:
        """The standard deviation, sqrt(variance(ddof)); None when the variance is undefined."""
        variance = self.variance(ddof)
        return None if variance is None else math.sqrt(variance)

    # -- writing ---------------------------------------------------------------------------

    def update(self, x: float) -> None:
        """Fold one value in (Welford). NaN/±inf are counted in `nonfinite` and skipped."""
        # The hot path of every metric: locals instead of repeated attribute reads, and no
        # function calls (see bench/stats.py for what each costs).
        mean = self._mean
        try:
            delta = x - mean
        except (TypeError, OverflowError):
            raise InvalidValueError(
                f"RunningStats.update needs a real number within float range, "
                f"got {type(x).__name__}: {reprlib.repr(x)}"
            ) from None
        # inf - inf and nan - nan are nan, so this one comparison catches every non-finite x
        # (the mean itself is always finite) for the price of a subtraction.
        if delta - delta != 0.0:
            self._nonfinite += 1
            return
        # Compare before writing anything: a type that subtracts but does not order (complex)
        # raises here and leaves the statistics untouched. min <= max once a value is in, so
        # x cannot be a new min and a new max at once; the first value (min is +inf, max
        # -inf) sets both.
        if x < self._min:
            if self._count == 0:
                self._max = x
            self._min = x
        elif x > self._max:
            self._max = x
        self._count = n = self._count + 1
        self._mean = mean = mean + delta / n
        self._m2 += delta * (x - mean)

    def update_many(self, values: Iterable[float] | np.ndarray[Any, Any]) -> None:
        """Fold a batch in, vectorised with numpy; equal to a loop of `update` up to rounding."""
        array = _as_float_array(values)
        if array.size == 0:
            return
        low, high = _extremes(array)
        if not (math.isfinite(low) and math.isfinite(high)):
            # NaN propagates into min/max and an inf is one of them, so two finite extremes
            # prove the batch clean; only a dirty batch pays for the isfinite mask.
            finite = np.isfinite(array)
            self._nonfinite += int(array.size - np.count_nonzero(finite))
            array = array[finite]
            if array.size == 0:
                return
            low, high = _extremes(array)
        n = int(array.size)
        spread = max(abs(low), abs(high))
        if spread * spread * n < _SAFE_SQUARE_SUM:
            # Plain ufunc reductions, not np.dot: BLAS dot goes multi-threaded on large
            # batches and stalls badly when the cores are busy (measured in bench/stats.py).
            mean = float(np.add.reduce(array)) / n
            centred = np.subtract(array, mean)
            np.multiply(centred, centred, out=centred)
            m2 = float(np.add.reduce(centred))
        else:
            mean, m2 = _huge_batch_moments(array)
        self._combine(n, mean, m2, low, high)

    def merge(self, other: RunningStats) -> None:
        """Fold another RunningStats into this one (Chan et al.); `other` is left unchanged."""
        if not isinstance(other, RunningStats):
            raise TypeError(f"can only merge a RunningStats, got {type(other).__name__}")
        self._nonfinite += other._nonfinite
        if other._count:
            self._combine(other._count, other._mean, other._m2, other._min, other._max)

    def copy(self) -> RunningStats:
        """An independent copy."""
        return RunningStats(
            _count=self._count,
            _mean=self._mean,
            _m2=self._m2,
            _min=self._min,
            _max=self._max,
            _nonfinite=self._nonfinite,
        )

    def _combine(self, n_b: int, mean_b: float, m2_b: float, min_b: float, max_b: float) -> None:
        n_a = self._count
        if n_a == 0:
            self._count, self._mean, self._m2 = n_b, mean_b, m2_b
            self._min, self._max = min_b, max_b
            return
        n = n_a + n_b
        delta = mean_b - self._mean
        # The weighted mean is symmetric in a and b, so a.merge(b) and b.merge(a) agree
        # bit for bit; the delta form is the fallback when the products overflow.
        mean = (n_a * self._mean + n_b * mean_b) / n
        self._mean = mean if math.isfinite(mean) else self._mean + delta * (n_b / n)
        self._m2 += m2_b + delta * delta * (n_a / n) * n_b
        self._count = n
        self._min = min(self._min, min_b)
        self._max = max(self._max, max_b)

    # -- checkpointing ---------------------------------------------------------------------

    def to_state(self) -> RunningStatsState:
        """A frozen msgspec struct of this instance, to checkpoint or send to another process."""
        return RunningStatsState(
            count=self._count,
            mean=self._mean,
            m2=self._m2,
            min=self.min,
            max=self.max,
            nonfinite=self._nonfinite,
        )

    @classmethod
    def from_state(cls, state: RunningStatsState) -> RunningStats:
        """Rebuild from `to_state()`; raises InvalidStateError if the state is inconsistent."""
        _check_state(state)
        if state.count == 0:
            return cls(_nonfinite=state.nonfinite)
        assert state.min is not None  # _check_state refused a non-empty state without it
        assert state.max is not None
        return cls(
            _count=state.count,
            _mean=state.mean,
            _m2=state.m2,
            _min=state.min,
            _max=state.max,
            _nonfinite=state.nonfinite,
        )

    def to_json(self) -> bytes:
        """The state as JSON bytes."""
        return msgspec.json.encode(self.to_state())

    @classmethod
    def from_json(cls, data: bytes | str) -> RunningStats:
        """Rebuild from `to_json()`; raises InvalidStateError on malformed or inconsistent data."""
        try:
            state = msgspec.json.decode(data, type=RunningStatsState)
        except msgspec.DecodeError as exc:
            raise InvalidStateError(f"not a RunningStats state: {exc}") from exc
        return cls.from_state(state)


# Below this, neither the sum nor the sum of squared deviations of a batch can overflow.
_SAFE_SQUARE_SUM = 1e300


def _huge_batch_moments(array: np.ndarray[Any, Any]) -> tuple[float, float]:
    """Mean and M2 of a batch whose sums may overflow: scale first, and let a variance that
    really is beyond float range come out as +inf without a warning."""
    n = array.size
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(np.add.reduce(array / n))
        centred = np.subtract(array, mean)
        m2 = float(np.add.reduce(centred * centred))
    return mean, m2


def _extremes(array: np.ndarray[Any, Any]) -> tuple[float, float]:
    # The ufunc reductions directly: ndarray.min/max add a Python wrapper per call, which
    # dominates on small batches.
    return float(np.minimum.reduce(array)), float(np.maximum.reduce(array))


def _check_state(state: RunningStatsState) -> None:
    problems: list[str] = []
    if state.count < 0 or state.nonfinite < 0:
        problems.append("count and nonfinite must be >= 0")
    # m2 may be +inf (the variance of values near 1e300 overflows), never NaN or negative.
    if not math.isfinite(state.mean) or not state.m2 >= 0:
        problems.append("mean must be finite and m2 >= 0")
    if state.count == 0:
        if state.min is not None or state.max is not None or state.mean != 0 or state.m2 != 0:
            problems.append("an empty state has mean 0, m2 0 and no min/max")
    elif state.min is None or state.max is None:
        problems.append("a non-empty state needs min and max")
    elif state.min > state.max:
        problems.append("min must be <= max")
    else:
        # Rounding may put a streamed mean an ulp or so outside [min, max]; allow for that.
        slack = 1e-9 * max(abs(state.min), abs(state.max), 1e-300)
        if not state.min - slack <= state.mean <= state.max + slack:
            problems.append("mean must lie between min and max")
    if problems:
        raise InvalidStateError(f"refusing RunningStats state {state!r}: " + "; ".join(problems))


def _as_float_array(values: Iterable[float] | np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    try:
        if isinstance(values, np.ndarray):
            array = values.astype(np.float64, copy=False)
        elif isinstance(values, list | tuple):
            array = np.asarray(values, dtype=np.float64)
        else:
            array = np.fromiter(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"expected a batch of real numbers: {exc}") from exc
    return array.reshape(-1)
