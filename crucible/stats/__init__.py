"""Pure statistics for Crucible: no I/O, no actors.

- `RunningStats`: streaming count/mean/variance/min/max (Welford), vectorised batches and
  Chan et al.'s parallel merge, checkpointable as a `RunningStatsState` msgspec struct.
- `percentile` / `percentiles`: exact percentiles of stored data (linear interpolation).
- `QuantileSketch`: a mergeable streaming quantile sketch (DataSketches REQ) for p50..p99.
- `zscore_anomalies`, `mad_anomalies`, `iqr_anomalies`, `StreamingZScore`, `StreamingIQR`
  (-> `Anomaly`).
- `last`, `last_n`, `range`, `windowed` (-> `Window`): windows over timestamped records.

Non-finite values (NaN, ±inf) are counted apart, never folded into a statistic.
"""

from ._anomaly import (
    Anomaly,
    StreamingIQR,
    StreamingZScore,
    iqr_anomalies,
    mad_anomalies,
    zscore_anomalies,
)
from ._errors import InvalidStateError, InvalidValueError, StatsError
from ._percentile import percentile, percentiles
from ._running import RunningStats, RunningStatsState
from ._sketch import STANDARD_PERCENTILES, QuantileSketch, QuantileSketchState
from ._windows import UNIT_MICROSECONDS, Window, last, last_n, range, windowed

__all__ = [
    "STANDARD_PERCENTILES",
    "UNIT_MICROSECONDS",
    "Anomaly",
    "InvalidStateError",
    "InvalidValueError",
    "QuantileSketch",
    "QuantileSketchState",
    "RunningStats",
    "RunningStatsState",
    "StatsError",
    "StreamingIQR",
    "StreamingZScore",
    "Window",
    "iqr_anomalies",
    "last",
    "last_n",
    "mad_anomalies",
    "percentile",
    "percentiles",
    "range",
    "windowed",
    "zscore_anomalies",
]
