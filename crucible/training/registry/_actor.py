"""ModelRegistry actor: the SQLite registry (``_store``) behind typed messages.

The actor owns one connection and handles one message at a time, so the store needs no locks;
each store call runs on a worker thread to keep SQLite's fsyncs off the event loop. Rule
violations (missing fields, duplicates, cycles, bad promotions, unknown ids) go back to the
caller as typed errors and leave the registry running and unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import anyio.to_thread
import msgspec

from crucible.actors import Actor, ExitReason, handler
from crucible.telemetry import execute
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
from crucible.training.registry._records import ModelRecord, RegistryError
from crucible.training.registry._store import RegistryStore

T = TypeVar("T")


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
        # Register's fields are register()'s positional parameters, in order.
        fields = msgspec.structs.astuple(message)
        record = await self._run(partial(self.state.register, *fields))
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
    async def get_by_config_hash(self, message: GetModelByConfigHash) -> ModelRecord:
        return await self._run(partial(self.state.get_by_config_hash, message.config_hash))

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
