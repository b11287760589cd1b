"""The training backends: ``tinker`` (the real SDK) and ``faulty`` (fault injection around any
backend). The local torch backend is ``crucible.training.backends.local``, imported on its own
because it needs torch (the ``local`` extra)."""

from crucible.training.backends.faulty import (
    FAULT_KINDS,
    FaultKind,
    FaultyBackend,
    FaultySamplingClient,
    InjectedFault,
    LatencyDistribution,
)
from crucible.training.backends.tinker import (
    TinkerAuthError,
    TinkerBackend,
    TinkerBackendConfig,
    TinkerSamplingClient,
)

__all__ = [
    "FAULT_KINDS",
    "FaultKind",
    "FaultyBackend",
    "FaultySamplingClient",
    "InjectedFault",
    "LatencyDistribution",
    "TinkerAuthError",
    "TinkerBackend",
    "TinkerBackendConfig",
    "TinkerSamplingClient",
]
