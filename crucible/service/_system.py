"""System metrics (cpu, memory, gpu when there is one), sampled and recorded periodically.

`SystemSampler(store, run_id)` is an actor: spawn it in a runtime, or from a synchronous
trainer with `crucible.embedded()`, and it records `system/<name>` metrics into any
MetricsStore (a `RemoteMetricsStore` sends them to the service) every `interval` seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
import psutil

from crucible.actors import Actor, Request, Timer, handler
from crucible.metrics import MetricRecord, MetricsStore

__all__ = ["SampleSystem", "SystemSampler", "sample_system"]


def _gpu_samples() -> dict[str, float]:
    """Utilisation and memory per NVIDIA GPU through NVML, when the driver is there."""
    try:
        import pynvml  # optional (nvidia-ml-py): only on GPU machines
    except ImportError:
        return {}
    samples: dict[str, float] = {}
    try:
        pynvml.nvmlInit()
        for index in range(pynvml.nvmlDeviceGetCount()):
            device = pynvml.nvmlDeviceGetHandleByIndex(index)
            rates = pynvml.nvmlDeviceGetUtilizationRates(device)
            memory = pynvml.nvmlDeviceGetMemoryInfo(device)
            samples[f"gpu{index}_percent"] = float(rates.gpu)
            samples[f"gpu{index}_memory_bytes"] = float(memory.used)
    except Exception:  # no driver or no device: a CPU machine reports no gpu metrics
        return samples
    return samples


def sample_system() -> dict[str, float]:
    """One sample: cpu_percent (since the previous call), memory_percent, memory_used_bytes,
    process_rss_bytes, and gpu<i>_percent / gpu<i>_memory_bytes per GPU."""
    memory = psutil.virtual_memory()
    samples = {
        "cpu_percent": float(psutil.cpu_percent(interval=None)),
        "memory_percent": float(memory.percent),
        "memory_used_bytes": float(memory.used),
        "process_rss_bytes": float(psutil.Process().memory_info().rss),
    }
    samples.update(_gpu_samples())
    return samples


class SampleSystem(Request[int], frozen=True):
    """Take one sample now (the sampler's timer sends it too); replies the samples taken."""


@attrs.define
class _State:
    timer: Timer | None = None
    samples: int = 0


class SystemSampler(Actor[_State]):
    """Record `system/<name>` metrics for `run_id` into `store` every `interval` seconds."""

    def __init__(self, store: MetricsStore, run_id: str, *, interval: float = 10.0) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.store = store
        self.run_id = run_id
        self.interval = interval

    async def init(self) -> _State:
        psutil.cpu_percent(interval=None)  # the first reading only starts the measurement
        return _State(timer=self.send_interval(self.interval, SampleSystem()))

    @handler
    async def sample(self, message: SampleSystem) -> int:
        now = datetime.now(UTC)
        records = [
            MetricRecord(self.run_id, f"system/{name}", value, None, now)
            for name, value in sample_system().items()
        ]
        await self.store.record_many(records)
        self.state.samples += 1
        return self.state.samples
