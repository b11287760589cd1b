"""ModelRegistryClient: typed methods over a ModelRegistry's ref."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any, Literal

from crucible.actors import ActorRef
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
from crucible.training.registry._records import MetricOp, ModelRecord, ModelStage, config_hash


class ModelRegistryClient:
    """Typed methods over a ModelRegistry's ref (each one an actor call)."""

    def __init__(self, ref: ActorRef[Any], *, timeout: float | None = 30.0) -> None:
        self.ref = ref
        self._timeout = timeout

    async def register(
        self,
        name: str,
        version: str,
        base_model: str,
        recipe: str,
        training_config: Mapping[str, Any],
        checkpoint_path: str,
        metrics: Mapping[str, float] | None = None,
        tags: tuple[str, ...] | builtins.list[str] = (),
        parent: int | None = None,
    ) -> ModelRecord:
        message = Register(
            name,
            version,
            base_model,
            recipe,
            dict(training_config),
            checkpoint_path,
            dict(metrics or {}),
            tuple(tags),
            parent,
        )
        return await self.ref.call(message, timeout=self._timeout)

    async def get(self, model_id: int) -> ModelRecord:
        return await self.ref.call(GetModel(model_id), timeout=self._timeout)

    async def get_by_config_hash(self, digest: str) -> ModelRecord:
        """The model registered with the config whose ``config_hash`` is ``digest``
        (ModelNotFound if none; ValueError if ``digest`` is not a sha256 hex digest)."""
        return await self.ref.call(GetModelByConfigHash(digest), timeout=self._timeout)

    async def get_by_config(self, training_config: Mapping[str, Any]) -> ModelRecord:
        """The model registered with ``training_config`` (key order does not matter)."""
        return await self.get_by_config_hash(config_hash(training_config))

    async def list(
        self, name: str | None = None, stage: ModelStage | None = None, limit: int | None = None
    ) -> builtins.list[ModelRecord]:
        return await self.ref.call(ListModels(name, stage, limit), timeout=self._timeout)

    async def find(
        self,
        tags: tuple[str, ...] = (),
        base_model: str | None = None,
        recipe: str | None = None,
        metric: tuple[str, MetricOp, float] | None = None,
    ) -> builtins.list[ModelRecord]:
        message = FindModels(tuple(tags), base_model, recipe, metric)
        return await self.ref.call(message, timeout=self._timeout)

    async def find_for_ensemble(
        self,
        metric: str,
        top_n: int = 5,
        tags: tuple[str, ...] = (),
        mode: Literal["min", "max"] = "max",
    ) -> builtins.list[ModelRecord]:
        message = FindForEnsemble(metric, top_n, tuple(tags), mode)
        return await self.ref.call(message, timeout=self._timeout)

    async def update_metrics(self, model_id: int, metrics: Mapping[str, float]) -> ModelRecord:
        return await self.ref.call(UpdateMetrics(model_id, dict(metrics)), timeout=self._timeout)

    async def promote(self, model_id: int, stage: ModelStage) -> ModelRecord:
        return await self.ref.call(Promote(model_id, stage), timeout=self._timeout)

    async def add_parent(self, child_id: int, parent_id: int) -> None:
        await self.ref.call(AddParent(child_id, parent_id), timeout=self._timeout)

    async def ancestors(self, model_id: int) -> builtins.list[ModelRecord]:
        return await self.ref.call(Ancestors(model_id), timeout=self._timeout)

    async def descendants(self, model_id: int) -> builtins.list[ModelRecord]:
        return await self.ref.call(Descendants(model_id), timeout=self._timeout)

    async def export_json(self) -> str:
        return await self.ref.call(ExportJson(), timeout=self._timeout)

    async def import_json(self, text: str) -> builtins.list[ModelRecord]:
        return await self.ref.call(ImportJson(text), timeout=self._timeout)
