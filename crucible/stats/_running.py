"""Streaming mean/variance/min/max: Welford/Chan updates, vectorised, mergeable."""

from __future__ import annotations

import math
import reprlib
from array import array
from collections.abc import Iterable
from typing import Any

import msgspec
import numpy as np
from attrs import define, field

from ._errors import InvalidStateError, InvalidValueError

#: Single values wait in a compact float64 buffer of at most this many (8 KiB) before they
#: are folded in as one vectorised block.
_PENDING_LIMIT = 1024


#: Up to this many buffered values are folded in by the plain Welford recurrence ...
_FEW = 16
#: ... provided they are small enough that no difference or square can overflow.
_WELFORD_SAFE = 1e150


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


@define(eq=False, repr=False)
class RunningStats:
    """Count, mean, variance, min and max of a stream, in O(1) memory.

    The state is Welford's (count, mean, M2 = sum of squared deviations, min, max), combined
    with Chan et al.'s parallel formula, so streams can be split across processes, merged in
    any order and checkpointed (`to_state`). Batches (`update_many`) are reduced with numpy
    (two-pass mean and M2 within the batch, then one Chan step). Single values (`update`) are
    appended to an 8 KiB float64 buffer and folded in the same way every 1024 values and
    before any read: Welford's recurrence applied blockwise. That keeps `update` near the cost
    of a list append (bench/stats.py) and is at least as accurate as the value-by-value
    recurrence; results equal a value-by-value Welford loop up to rounding.

    Non-finite values (NaN, +inf, -inf) are *counted apart*: they never enter count, mean,
    variance, min or max, and `nonfinite` tells how many were seen. A diverging loss therefore
    shows up as a rising `nonfinite` without poisoning the mean, and a metrics actor fed by
    many producers never crashes on one bad value. Values that are not real numbers raise
    `InvalidValueError` at the call that passed them, and are not added.

    Not thread-safe: one owner (an actor, a loop) updates it; merge copies across owners.
    """

    _count: int = field(default=0, alias="_count")
    _mean: float = field(default=0.0, alias="_mean")
    _m2: float = field(default=0.0, alias="_m2")
    _min: float = field(default=math.inf, alias="_min")
    _max: float = field(default=-math.inf, alias="_max")
    _nonfinite: int = field(default=0, alias="_nonfinite")
    _pending: array[float] = field(factory=lambda: array("d"), init=False)

    @classmethod
    def of(cls, values: Iterable[float] | np.ndarray[Any, Any]) -> RunningStats:
        """Return the statistics of `values` (a shortcut for `update_many` on a new instance)."""
        stats = cls()
        stats.update_many(values)
        return stats

    # -- reading (each read folds the buffered single values in first) ---------------------

    @property
    def count(self) -> int:
        """How many finite values were folded in."""
        self._flush()
        return self._count

    @property
    def nonfinite(self) -> int:
        """How many NaN/±inf values were seen and left out."""
        self._flush()
        return self._nonfinite

    @property
    def mean(self) -> float | None:
        """The arithmetic mean, or None when no finite value was seen."""
        self._flush()
        return float(self._mean) if self._count else None

    @property
    def min(self) -> float | None:
        """The smallest finite value, or None when there is none."""
        self._flush()
        return float(self._min) if self._count else None

    @property
    def max(self) -> float | None:
        """The largest finite value, or None when there is none."""
        self._flush()
        return float(self._max) if self._count else None

    @property
    def sum(self) -> float:
        """The sum of the finite values (count * mean; 0.0 when empty)."""
        self._flush()
        return self._mean * self._count

    def variance(self, ddof: int = 1) -> float | None:
        """The variance with `ddof` delta degrees of freedom (1: sample, 0: population).

        None when there are not more than `ddof` values (the estimate is undefined).
        """
        if ddof < 0:
            raise ValueError(f"ddof must be >= 0, got {ddof}")
        self._flush()
        if self._count <= ddof:
            return None
        return self._m2 / (self._count - ddof)

    def std(self, ddof: int = 1) -> float | None:
        """The standard deviation, sqrt(variance(ddof)); None when the variance is undefined."""
        variance = self.variance(ddof)
        return None if variance is None else math.sqrt(variance)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunningStats):
            return NotImplemented
        return self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"RunningStats(count={self.count}, mean={self.mean}, std={self.std()}, "
            f"min={self.min}, max={self.max}, nonfinite={self.nonfinite})"
        )

    # -- writing ---------------------------------------------------------------------------

    def update(self, x: float) -> None:
        """Add one value. NaN/±inf are counted in `nonfinite` and skipped.

        Raises InvalidValueError (adding nothing) if `x` is not a real number within float
        range.
        """
        pending = self._pending
        try:
            # The typed array checks x for us: str, None and complex raise TypeError, an int
            # beyond float range OverflowError, before anything is stored.
            pending.append(x)
        except (TypeError, OverflowError):
            raise InvalidValueError(
                f"RunningStats.update needs a real number within float range, "
                f"got {type(x).__name__}: {reprlib.repr(x)}"
            ) from None
        if len(pending) >= _PENDING_LIMIT:
            self._flush()

    def update_many(self, values: Iterable[float] | np.ndarray[Any, Any]) -> None:
        """Add a batch, vectorised with numpy; equal to a loop of `update` up to rounding.

        All or nothing: a batch with a non-number raises InvalidValueError and adds nothing.
        """
        self._fold(_as_float_array(values))

    def merge(self, other: RunningStats) -> None:
        """Fold another RunningStats into this one (Chan et al.); `other` is left unchanged."""
        if not isinstance(other, RunningStats):
            raise TypeError(f"can only merge a RunningStats, got {type(other).__name__}")
        self._flush()
        other._flush()  # changes how other holds its values, not what it holds
        self._nonfinite += other._nonfinite
        if other._count:
            self._combine(other._count, other._mean, other._m2, other._min, other._max)

    def copy(self) -> RunningStats:
        """An independent copy."""
        return RunningStats.from_state(self.to_state())

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = array("d")
        if len(pending) <= _FEW and max(map(abs, pending)) < _WELFORD_SAFE:
            # An update-then-read pattern (a streaming detector, a live dashboard) flushes
            # one value at a time: the plain recurrence beats numpy's per-call overhead there.
            self._welford(pending)
        else:
            self._fold(np.frombuffer(pending, dtype=np.float64))

    def _welford(self, values: Iterable[float]) -> None:
        count, mean, m2 = self._count, self._mean, self._m2
        low, high = self._min, self._max
        for x in values:
            if x - x != 0.0:  # NaN or +-inf
                self._nonfinite += 1
                continue
            count += 1
            delta = x - mean
            mean += delta / count
            m2 += delta * (x - mean)
            low = min(low, x)
            high = max(high, x)
        self._count, self._mean, self._m2, self._min, self._max = count, mean, m2, low, high

    def _fold(self, batch: np.ndarray[Any, Any]) -> None:
        if batch.size == 0:
            return
        low, high = _extremes(batch)
        if not (math.isfinite(low) and math.isfinite(high)):
            # NaN propagates into min/max and an inf is one of them, so two finite extremes
            # prove the batch clean; only a dirty batch pays for the isfinite mask.
            finite = np.isfinite(batch)
            self._nonfinite += int(batch.size - np.count_nonzero(finite))
            batch = batch[finite]
            if batch.size == 0:
                return
            low, high = _extremes(batch)
        n = int(batch.size)
        spread = max(abs(low), abs(high))
        if spread * spread * n < _SAFE_SQUARE_SUM:
            # Plain ufunc reductions, not np.dot: BLAS dot goes multi-threaded on large
            # batches and stalls badly when the cores are busy (measured in bench/stats.py).
            mean = float(np.add.reduce(batch)) / n
            centred = np.subtract(batch, mean)
            np.multiply(centred, centred, out=centred)
            m2 = float(np.add.reduce(centred))
        else:
            mean, m2 = _huge_batch_moments(batch)
        self._combine(n, mean, m2, low, high)

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
        self._flush()
        return RunningStatsState(
            count=self._count,
            mean=self._mean,
            m2=self._m2,
            min=float(self._min) if self._count else None,
            max=float(self._max) if self._count else None,
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
