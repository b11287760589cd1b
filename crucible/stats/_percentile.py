"""Exact percentiles of stored data."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ._running import _as_float_array


def percentile(values: Iterable[float] | np.ndarray[Any, Any], p: float) -> float | None:
    """The exact p-th percentile (0 <= p <= 100) of `values`, or None when there are none.

    Linear interpolation between closest ranks: sort the n values, take the (fractional)
    index p/100 * (n - 1) and interpolate between its two neighbours (numpy's default
    "linear" method). NaN/±inf values are left out, as everywhere in crucible.stats.
    """
    return percentiles(values, (p,))[p]


def percentiles(
    values: Iterable[float] | np.ndarray[Any, Any], ps: Sequence[float]
) -> dict[float, float | None]:
    """Several exact percentiles at once (one sort): {p: value}, values None when empty."""
    for p in ps:
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"a percentile must be between 0 and 100, got {p!r}")
    array = _as_float_array(values)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return dict.fromkeys(ps)
    result = np.percentile(array, np.asarray(ps, dtype=np.float64))
    return {p: float(v) for p, v in zip(ps, result, strict=True)}
