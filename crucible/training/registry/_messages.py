"""The ModelRegistry actor's messages."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from crucible.actors import Request
from crucible.training.registry._records import MetricOp, ModelRecord, ModelStage


class Register(Request[ModelRecord], frozen=True):
    name: str
    version: str
    base_model: str
    recipe: str
    training_config: dict[str, Any]
    checkpoint_path: str
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    tags: tuple[str, ...] = ()
    parent: int | None = None


class GetModel(Request[ModelRecord], frozen=True):
    model_id: int


class GetModelByConfigHash(Request[ModelRecord], frozen=True):
    config_hash: str


class ListModels(Request[list[ModelRecord]], frozen=True):
    name: str | None = None
    stage: ModelStage | None = None
    limit: int | None = None


class FindModels(Request[list[ModelRecord]], frozen=True):
    tags: tuple[str, ...] = ()
    base_model: str | None = None
    recipe: str | None = None
    metric: tuple[str, MetricOp, float] | None = None


class FindForEnsemble(Request[list[ModelRecord]], frozen=True):
    metric: str
    top_n: int = 5
    tags: tuple[str, ...] = ()
    mode: Literal["min", "max"] = "max"


class UpdateMetrics(Request[ModelRecord], frozen=True):
    model_id: int
    metrics: dict[str, float]


class Promote(Request[ModelRecord], frozen=True):
    model_id: int
    stage: ModelStage


class AddParent(Request[None], frozen=True):
    child_id: int
    parent_id: int


class Ancestors(Request[list[ModelRecord]], frozen=True):
    model_id: int


class Descendants(Request[list[ModelRecord]], frozen=True):
    model_id: int


class ExportJson(Request[str], frozen=True):
    pass


class ImportJson(Request[list[ModelRecord]], frozen=True):
    text: str
