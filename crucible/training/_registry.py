"""ModelRegistry actor: the SQLite registry (``_registry_store``) behind typed messages.

The actor owns one connection and handles one message at a time, so the store needs no locks;
each store call runs on a worker thread to keep SQLite's fsyncs off the event loop. Rule
violations (missing fields, duplicates, cycles, bad promotions, unknown ids) go back to the
caller as typed errors and leave the registry running and unchanged.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio.to_thread
import msgspec

from crucible.actors import Actor, ActorRef, ExitReason, Request, handler
from crucible.telemetry import execute
from crucible.training._registry_store import (
    MetricOp,
    ModelRecord,
    RegistryError,
    RegistryStore,
    Stage,
)

T = TypeVar("T")


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


class ListModels(Request[list[ModelRecord]], frozen=True):
    name: str | None = None
    stage: Stage | None = None
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
    stage: Stage


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


class ModelRegistry(Actor[RegistryStore]):
    """A persistent model registry (SQLite at ``path``; reopened by every incarnation)."""

    caller_errors = (RegistryError, ValueError)

    def __init__(self, path: Path | str) -> None:
        self.path = path

    async def init(self) -> RegistryStore:
        return await anyio.to_thread.run_sync(RegistryStore, self.path)

    async def terminate(self, reason: ExitReason, state: RegistryStore) -> None:
        await anyio.to_thread.run_sync(state.close)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn)

    @handler
    async def register(self, message: Register) -> ModelRecord:
        record = await self._run(
            partial(
                self.state.register,
                message.name,
                message.version,
                message.base_model,
                message.recipe,
                message.training_config,
                message.checkpoint_path,
                message.metrics,
                message.tags,
                message.parent,
            )
        )
        execute(
            "crucible.registry.registered",
            {"model_id": record.id},
            {"name": record.name, "version": record.version, "base_model": record.base_model},
        )
        return record

    @handler
    async def get(self, message: GetModel) -> ModelRecord:
        return await self._run(partial(self.state.get, message.model_id))

    @handler
    async def list_models(self, message: ListModels) -> list[ModelRecord]:
        return await self._run(
            partial(self.state.list_models, message.name, message.stage, message.limit)
        )

    @handler
    async def find(self, message: FindModels) -> list[ModelRecord]:
        return await self._run(
            partial(
                self.state.find, message.tags, message.base_model, message.recipe, message.metric
            )
        )

    @handler
    async def find_for_ensemble(self, message: FindForEnsemble) -> list[ModelRecord]:
        return await self._run(
            partial(
                self.state.find_for_ensemble,
                message.metric,
                message.top_n,
                message.tags,
                message.mode,
            )
        )

    @handler
    async def update_metrics(self, message: UpdateMetrics) -> ModelRecord:
        return await self._run(
            partial(self.state.update_metrics, message.model_id, message.metrics)
        )

    @handler
    async def promote(self, message: Promote) -> ModelRecord:
        before = (await self._run(partial(self.state.get, message.model_id))).stage
        record = await self._run(partial(self.state.promote, message.model_id, message.stage))
        execute(
            "crucible.registry.promoted",
            {"model_id": record.id},
            {"name": record.name, "version": record.version, "from": before, "to": record.stage},
        )
        return record

    @handler
    async def add_parent(self, message: AddParent) -> None:
        await self._run(partial(self.state.add_parent, message.child_id, message.parent_id))

    @handler
    async def ancestors(self, message: Ancestors) -> list[ModelRecord]:
        return await self._run(partial(self.state.ancestors, message.model_id))

    @handler
    async def descendants(self, message: Descendants) -> list[ModelRecord]:
        return await self._run(partial(self.state.descendants, message.model_id))

    @handler
    async def export_json(self, message: ExportJson) -> str:
        return await self._run(self.state.export_json)

    @handler
    async def import_json(self, message: ImportJson) -> list[ModelRecord]:
        return await self._run(partial(self.state.import_json, message.text))


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

    async def list(
        self, name: str | None = None, stage: Stage | None = None, limit: int | None = None
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

    async def promote(self, model_id: int, stage: Stage) -> ModelRecord:
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
