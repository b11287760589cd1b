"""The local backend: LoRA (peft) fine-tuning of any Hugging Face causal LM found offline (a
directory, the HF cache, or a model shipped in the package), on CUDA when present, else CPU.

Needs torch, transformers and peft (the ``local`` extra); ``crucible.training`` itself does not
import this package. ``CheckpointPath`` is the one parser of ``local://`` checkpoint paths.
"""

from crucible.training.backends.local._backend import LocalBackend, LocalSamplingClient
from crucible.training.backends.local._base_models import (
    BASE_MODELS,
    DEFAULT_BASE_MODEL,
    BaseModelSpec,
    load_tokenizer,
    resolve_model,
)
from crucible.training.backends.local._engine import LocalBackendConfig
from crucible.training.backends.local._lora import LORA_TARGETS, LoraConfig, resolve_targets
from crucible.training.backends.local._paths import PATH_KINDS, CheckpointPath, PathKind
from crucible.training.backends.local._tokenizer import SPECIAL_TOKENS, ByteTokenizer, HFTokenizer

__all__ = [
    "BASE_MODELS",
    "DEFAULT_BASE_MODEL",
    "LORA_TARGETS",
    "PATH_KINDS",
    "SPECIAL_TOKENS",
    "BaseModelSpec",
    "ByteTokenizer",
    "CheckpointPath",
    "HFTokenizer",
    "LocalBackend",
    "LocalBackendConfig",
    "LocalSamplingClient",
    "LoraConfig",
    "PathKind",
    "load_tokenizer",
    "resolve_model",
    "resolve_targets",
]
