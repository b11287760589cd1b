"""The sampler pool: sampler actors under a supervisor that run sampling requests with bounded
in-flight work, retry failed samples in place, survive sampler crashes without losing a
request, and switch to new weights when the trainer publishes them (see docs/training.md)."""

from crucible.training.sampling._pool import SamplerPool, open_sampler_pool
from crucible.training.sampling._sampler import Sampler
from crucible.training.sampling._work import (
    NoWeightsPublished,
    PendingSample,
    PooledSample,
    SamplerPoolClosed,
    SamplerPoolError,
    SamplerPoolFailed,
    SamplerPoolStats,
    SamplerWeights,
    SampleTimedOut,
    WeightsVersionError,
)

__all__ = [
    "NoWeightsPublished",
    "PendingSample",
    "PooledSample",
    "SampleTimedOut",
    "Sampler",
    "SamplerPool",
    "SamplerPoolClosed",
    "SamplerPoolError",
    "SamplerPoolFailed",
    "SamplerPoolStats",
    "SamplerWeights",
    "WeightsVersionError",
    "open_sampler_pool",
]
