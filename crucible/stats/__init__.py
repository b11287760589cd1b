"""Pure statistics for Crucible: no I/O, no actors.

- `RunningStats`: streaming count/mean/variance/min/max (Welford), vectorised batches and
  Chan et al.'s parallel merge, checkpointable as a `RunningStatsState` msgspec struct.
- `percentile` / `percentiles`: exact percentiles of stored data (linear interpolation).
- `last`, `last_n`, `range`, `windowed` (-> `Window`): windows over timestamped records.

Non-finite values (NaN, ±inf) are counted apart, never folded into a statistic.
"""

from ._errors import InvalidStateError, InvalidValueError, StatsError
from ._percentile import percentile, percentiles
from ._running import RunningStats, RunningStatsState
from ._windows import UNIT_MICROSECONDS, Window, last, last_n, range, windowed

__all__ = [
    "UNIT_MICROSECONDS",
    "InvalidStateError",
    "InvalidValueError",
    "RunningStats",
    "RunningStatsState",
    "StatsError",
    "Window",
    "last",
    "last_n",
    "percentile",
    "percentiles",
    "range",
    "windowed",
]
