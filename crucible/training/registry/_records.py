"""What the model registry stores, and the errors its rules raise."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import msgspec

ModelStage = Literal["experiment", "staging", "production", "archived"]
STAGES: Final[tuple[ModelStage, ...]] = ("experiment", "staging", "production", "archived")
MetricOp = Literal["<", "<=", ">", ">=", "==", "!="]


class RegistryError(Exception):
    """Base class of the model registry's errors."""


class MissingFields(RegistryError, ValueError):
    def __init__(self, fields: Sequence[str]) -> None:
        super().__init__(f"register needs non-empty {', '.join(fields)}")
        self.fields = tuple(fields)


class AlreadyExists(RegistryError):
    """(name, version) is taken."""


class DuplicateConfig(RegistryError):
    """A model with the same training config is registered; ``existing`` is that model."""

    def __init__(self, existing: ModelRecord) -> None:
        super().__init__(
            f"the training config of this model is already registered as {existing.name} "
            f"version {existing.version} (id {existing.id})"
        )
        self.existing = existing


class ModelNotFound(RegistryError, LookupError):
    pass


class InvalidPromotion(RegistryError, ValueError):
    pass


class CycleDetected(RegistryError, ValueError):
    pass


class ModelRecord(msgspec.Struct, frozen=True):
    id: int
    name: str
    version: str
    base_model: str
    recipe: str
    training_config: dict[str, Any]
    config_hash: str
    checkpoint_path: str
    metrics: dict[str, float]
    tags: tuple[str, ...]
    stage: ModelStage
    created_at: str
    parent_id: int | None = None


def config_hash(training_config: Mapping[str, Any]) -> str:
    canonical = json.dumps(training_config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
