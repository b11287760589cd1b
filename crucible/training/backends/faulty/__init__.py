"""Fault injection: a TrainingBackend wrapper that injects latency, transient errors, crashes,
"applied then failed" errors and hangs, reproducibly per seed."""

from crucible.training.backends.faulty._backend import FaultyBackend, FaultySamplingClient
from crucible.training.backends.faulty._faults import (
    FAULT_KINDS,
    FaultKind,
    InjectedFault,
    LatencyDistribution,
)

__all__ = [
    "FAULT_KINDS",
    "FaultKind",
    "FaultyBackend",
    "FaultySamplingClient",
    "InjectedFault",
    "LatencyDistribution",
]
