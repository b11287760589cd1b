"""Checkpoints and run records: saving, loading, listing and deleting them.

A checkpoint is a file the local backend wrote at a ``CheckpointPath`` in the run's folder
under the server's root; the SDK sees it as a ``TinkerPath``. Beside the checkpoints, the
run's ``run.json`` records what the run trains, so a checkpoint can be loaded into a new
model, in a later session or a later server process on the same root. ``run.json`` is
replaced atomically and fsynced, like the checkpoints themselves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec
from tinker import types

from crucible._fs import write_bytes_atomically
from crucible.tinker_server._config import ServerConfig
from crucible.tinker_server._errors import ServiceError, describe
from crucible.tinker_server._futures import Outcome, Pending, sdk_json
from crucible.tinker_server._models import RunInfo, TrainingModel, new_backend
from crucible.tinker_server._paths import SCHEME, TinkerPath, run_folder_name
from crucible.tinker_server._sessions import Sessions, model_id_of
from crucible.training import CheckpointNotFound, UnknownBaseModel
from crucible.training.backends.local import PATH_KINDS, CheckpointPath, LocalBackend

_CHECKPOINT_TYPES = {"weights": "training", "sampler_weights": "sampler"}
_Saved = types.SaveWeightsResponse | types.SaveWeightsForSamplerResponse


class Checkpoints:
    def __init__(self, config: ServerConfig, sessions: Sessions) -> None:
        self.config = config
        self.root = config.root
        self.sessions = sessions

    # -- run records --------------------------------------------------------------------------

    def _run_file(self, run_id: str) -> Path:
        return self.root / run_folder_name(run_id) / "run.json"

    async def write_run(self, run: RunInfo) -> None:
        payload = msgspec.json.encode(run)
        await anyio.to_thread.run_sync(
            write_bytes_atomically, self._run_file(run.model_id), payload
        )

    async def read_run(self, run_id: str) -> RunInfo:
        try:
            raw = await anyio.Path(self._run_file(run_id)).read_bytes()
        except FileNotFoundError:
            raise CheckpointNotFound(f"no training run {run_id!r} on this server") from None
        return msgspec.json.decode(raw, type=RunInfo)

    # -- saving and loading (ordered by the model's seq_id) -----------------------------------

    async def save_weights(self, request: types.SaveWeightsRequest) -> str:
        name = request.path or f"checkpoint-{request.seq_id}"
        return await self._save(
            request.model_id,
            request.seq_id,
            "save_weights",
            lambda backend: backend.save_state(name),
        )

    async def save_weights_for_sampler(self, request: types.SaveWeightsForSamplerRequest) -> str:
        """A named save; an unnamed one is a sampling session (``Sampling.snapshot``)."""
        name = request.path
        assert name is not None
        return await self._save(
            request.model_id,
            request.seq_id,
            "save_weights_for_sampler",
            lambda backend: backend.save_weights_for_sampler(name),
        )

    async def _save(
        self,
        model_id: str,
        seq_id: int | None,
        kind: str,
        save: Callable[[LocalBackend], Awaitable[Awaitable[_Saved]]],
    ) -> str:
        model = self.sessions.model(model_id)

        async def submit(pending: Pending) -> None:
            await self.sessions.submit(
                pending,
                save(model.backend),
                lambda saved: _path_result(saved.path, model, kind),
            )

        return await model.accept(seq_id, self.sessions.futures, submit)

    async def load_weights(self, request: types.LoadWeightsRequest) -> str:
        assert request.model_id is not None
        model = self.sessions.model(request.model_id)

        async def submit(pending: Pending) -> None:
            try:
                path = TinkerPath.parse(request.path)
            except ValueError as error:
                pending.resolve(Outcome.failed(describe(error), "user"))
                return

            def answer(_loaded: types.LoadWeightsResponse) -> Outcome:
                return Outcome.json(
                    {"path": str(path), "model_id": model.model_id, "type": "load_weights"}
                )

            await self.sessions.submit(
                pending, model.backend.load_state(str(path.local), request.optimizer), answer
            )

        return await model.accept(request.seq_id, self.sessions.futures, submit)

    async def create_from_state(self, request: types.LoadWeightsRequest) -> str:
        """``create_training_client_from_state*``: a new model whose seq 0 loads a checkpoint."""
        session_id, model_seq_id = request.session_id, request.model_seq_id
        assert session_id is not None and model_seq_id is not None
        self.sessions.session(session_id)
        known = self.sessions.creating(session_id, model_seq_id)
        if known is not None:
            return known
        model_id = model_id_of(session_id, model_seq_id)
        pending = self.sessions.create(session_id, model_seq_id)

        async def create() -> types.LoadWeightsResponse:
            path = TinkerPath.parse(request.path)
            source = await self.read_run(path.run_id)
            if request.base_model is not None and request.base_model != source.base_model:
                raise UnknownBaseModel(
                    f"{request.path} was trained on {source.base_model!r}, not "
                    f"{request.base_model!r}; this server cannot move checkpoints across models"
                )
            run = msgspec.structs.replace(source, model_id=model_id)
            backend = await anyio.to_thread.run_sync(new_backend, self.config, run, model_id)
            try:
                await (await backend.load_state(str(path.local), request.optimizer))
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await backend.aclose()
                raise
            await self.write_run(run)
            self.sessions.add_model(TrainingModel(model_id, session_id, run, backend))
            return types.LoadWeightsResponse(path=str(path), model_id=model_id)

        self.sessions.finish(pending, create, sdk_json("load_weights"))
        return pending.request_id

    # -- listing and deleting -----------------------------------------------------------------

    def list_checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        folder_name = run_folder_name(run_id)
        folder = self.root / folder_name
        if not folder.is_dir():
            raise ServiceError(404, f"no training run {run_id!r} on this server")
        found: list[tuple[float, dict[str, Any]]] = []
        for checkpoint in sorted(p for p in folder.iterdir() if p.is_dir()):
            for kind in PATH_KINDS:
                path = TinkerPath(run_id, CheckpointPath(folder_name, kind, checkpoint.name))
                file = path.local.file(self.root)
                if not file.is_file():
                    continue
                stat = file.stat()
                found.append(
                    (
                        stat.st_mtime,
                        {
                            "checkpoint_id": path.checkpoint_id,
                            "checkpoint_type": _CHECKPOINT_TYPES[kind],
                            "time": dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC).isoformat(),
                            "tinker_path": str(path),
                            "size_bytes": stat.st_size,
                        },
                    )
                )
        return [entry for _mtime, entry in sorted(found, key=lambda item: item[0], reverse=True)]

    def delete_checkpoint(self, run_id: str, kind: str, name: str) -> None:
        try:
            path = TinkerPath.parse(f"{SCHEME}{run_id}/{kind}/{name}")
        except ValueError as error:
            raise ServiceError(400, describe(error)) from None
        file = path.local.file(self.root)
        if not file.is_file():
            raise ServiceError(404, f"no checkpoint {path}")
        file.unlink()


def _path_result(local_path: str, model: TrainingModel, kind: str) -> Outcome:
    path = TinkerPath.from_local(local_path, model.run_id)
    return Outcome.json({"path": str(path), "type": kind})
