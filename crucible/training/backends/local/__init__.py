"""The local backend: LoRA fine-tuning of a small shipped base model with torch on CPU.

Needs torch (the ``local`` extra); ``crucible.training`` itself does not import this package.
``CheckpointPath`` is the one parser of ``local://`` checkpoint paths.
"""

from crucible.training.backends.local._backend import LocalBackend, LocalSamplingClient
from crucible.training.backends.local._base_models import (
    BASE_MODELS,
    DEFAULT_BASE_MODEL,
    BaseModelSpec,
)
from crucible.training.backends.local._engine import LocalBackendConfig
from crucible.training.backends.local._model import LORA_TARGETS, LoraConfig, ModelConfig
from crucible.training.backends.local._paths import PATH_KINDS, CheckpointPath, PathKind
from crucible.training.backends.local._tokenizer import SPECIAL_TOKENS, ByteTokenizer

__all__ = [
    "BASE_MODELS",
    "DEFAULT_BASE_MODEL",
    "LORA_TARGETS",
    "PATH_KINDS",
    "SPECIAL_TOKENS",
    "BaseModelSpec",
    "ByteTokenizer",
    "CheckpointPath",
    "LocalBackend",
    "LocalBackendConfig",
    "LocalSamplingClient",
    "LoraConfig",
    "ModelConfig",
    "PathKind",
]
