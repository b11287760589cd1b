"""The local backend: LoRA fine-tuning of a small shipped base model with torch on CPU."""

from crucible.training.local._backend import LocalBackend, LocalSamplingClient
from crucible.training.local._base_models import BASE_MODELS, DEFAULT_BASE_MODEL, BaseModelSpec
from crucible.training.local._engine import LocalBackendConfig
from crucible.training.local._model import LORA_TARGETS, LoraConfig, ModelConfig
from crucible.training.local._tokenizer import SPECIAL_TOKENS, ByteTokenizer

__all__ = [
    "BASE_MODELS",
    "DEFAULT_BASE_MODEL",
    "LORA_TARGETS",
    "SPECIAL_TOKENS",
    "BaseModelSpec",
    "ByteTokenizer",
    "LocalBackend",
    "LocalBackendConfig",
    "LocalSamplingClient",
    "LoraConfig",
    "ModelConfig",
]
