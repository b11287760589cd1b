"""The model registry: a persistent SQLite store of trained models (config-hash duplicate
check and lookup, stages, lineage) behind the ModelRegistry actor.

Most callers use ``ModelRegistryClient``; the messages are for calling the actor's ref
directly (for example from synchronous code through ``crucible.embedded()``).
"""

from crucible.training.registry._actor import ModelRegistry
from crucible.training.registry._client import ModelRegistryClient
from crucible.training.registry._messages import (
    AddParent,
    Ancestors,
    Descendants,
    ExportJson,
    FindForEnsemble,
    FindModels,
    GetModel,
    GetModelByConfigHash,
    ImportJson,
    ListModels,
    Promote,
    Register,
    UpdateMetrics,
)
from crucible.training.registry._records import (
    STAGES,
    AlreadyExists,
    CycleDetected,
    DuplicateConfig,
    InvalidPromotion,
    MetricOp,
    MissingFields,
    ModelNotFound,
    ModelRecord,
    ModelStage,
    RegistryError,
    config_hash,
)
from crucible.training.registry._store import RegistryStore

__all__ = [
    "STAGES",
    "AddParent",
    "AlreadyExists",
    "Ancestors",
    "CycleDetected",
    "Descendants",
    "DuplicateConfig",
    "ExportJson",
    "FindForEnsemble",
    "FindModels",
    "GetModel",
    "GetModelByConfigHash",
    "ImportJson",
    "InvalidPromotion",
    "ListModels",
    "MetricOp",
    "MissingFields",
    "ModelNotFound",
    "ModelRecord",
    "ModelRegistry",
    "ModelRegistryClient",
    "ModelStage",
    "Promote",
    "Register",
    "RegistryError",
    "RegistryStore",
    "UpdateMetrics",
    "config_hash",
]
