"""The ``tinker`` backend: the TrainingBackend port over the real, unmodified Tinker SDK."""

from crucible.training.backends.tinker._backend import TinkerBackend
from crucible.training.backends.tinker._config import TinkerBackendConfig
from crucible.training.backends.tinker._errors import TinkerAuthError
from crucible.training.backends.tinker._sampling import TinkerSamplingClient

__all__ = ["TinkerAuthError", "TinkerBackend", "TinkerBackendConfig", "TinkerSamplingClient"]
