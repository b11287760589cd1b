"""Checkpoints: saving, loading, listing and deleting them, with Tinker's rules.

A checkpoint is a file the local backend wrote at a ``CheckpointPath`` in the run's folder
under the server's root; the SDK sees it as a ``TinkerPath``. Its metadata (time to live, user
metadata, published) lives in the run's metadata file (``Records``). As on Tinker, a state
save under a name the run already used is refused unless ``overwrite=True``, and a checkpoint
past its ``expires_at`` is deleted (when its run's checkpoints are next listed or loaded).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread
import msgspec
from tinker import types

from crucible.tinker_server._config import ServerConfig
from crucible.tinker_server._errors import ServiceError, describe
from crucible.tinker_server._futures import Outcome, Pending, sdk_json
from crucible.tinker_server._models import RunInfo, TrainingModel, new_backend
from crucible.tinker_server._paths import SCHEME, TinkerPath, run_folder_name
from crucible.tinker_server._records import CheckpointMeta, Records, check_ttl
from crucible.tinker_server._sessions import Sessions, model_id_of
from crucible.training import (
    CheckpointError,
    CheckpointNotFound,
    InvalidCheckpointPath,
    UnknownBaseModel,
)
from crucible.training.backends.local import PATH_KINDS, CheckpointPath, LocalBackend

_CHECKPOINT_TYPES: dict[str, types.CheckpointType] = {
    "weights": "training",
    "sampler_weights": "sampler",
}
_Saved = types.SaveWeightsResponse | types.SaveWeightsForSamplerResponse


class CheckpointExists(ValueError):
    """Tinker's answer to a save under a name the run already used, without overwrite."""


def _when(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


class Checkpoints:
    def __init__(self, config: ServerConfig, sessions: Sessions, records: Records) -> None:
        self.config = config
        self.root = config.root
        self.sessions = sessions
        self.records = records

    async def read_run(self, run_id: str) -> RunInfo:
        run = self.records.read_run_now(run_id)
        if run is None:
            raise CheckpointNotFound(f"no training run {run_id!r} on this server")
        return run

    # -- saving and loading (ordered by the model's seq_id) -----------------------------------

    async def save_weights(self, request: types.SaveWeightsRequest) -> str:
        name = request.path or f"checkpoint-{request.seq_id}"
        return await self._save(
            request.model_id,
            request.seq_id,
            "weights",
            name,
            lambda backend: backend.save_state(name),
            overwrite=request.overwrite,
            ttl_seconds=request.ttl_seconds,
            user_metadata=request.user_metadata,
        )

    async def save_weights_for_sampler(self, request: types.SaveWeightsForSamplerRequest) -> str:
        """A named save; an unnamed one is a sampling session (``Sampling.snapshot``). Sampler
        saves have no ``overwrite`` flag in Tinker's API: saving a name again replaces it."""
        name = request.path
        assert name is not None
        return await self._save(
            request.model_id,
            request.seq_id,
            "sampler_weights",
            name,
            lambda backend: backend.save_weights_for_sampler(name),
            overwrite=True,
            ttl_seconds=request.ttl_seconds,
            user_metadata=request.user_metadata,
        )

    async def _save(
        self,
        model_id: str,
        seq_id: int | None,
        kind: str,
        name: str,
        save: Callable[[LocalBackend], Awaitable[Awaitable[_Saved]]],
        *,
        overwrite: bool,
        ttl_seconds: int | None,
        user_metadata: dict[str, str] | None,
    ) -> str:
        model = self.sessions.model(model_id)
        check_ttl(ttl_seconds)  # refused at once (and the seq_id used up) when out of range
        answer_type = "save_weights" if kind == "weights" else "save_weights_for_sampler"

        async def submit(pending: Pending) -> None:
            # Checked at the request's turn: an earlier save in the queue counts.
            if not overwrite and self._exists(model, kind, name):
                error = CheckpointExists(
                    f"Checkpoint {name!r} already exists for model {model.model_id} in "
                    f"{kind}. Please choose a different name to avoid overwriting."
                )
                pending.resolve(Outcome.failed(describe(error), "user"))
                return

            async def saved() -> Outcome:
                result = await future
                path = TinkerPath.from_local(result.path, model.run_id)
                meta = CheckpointMeta(time.time(), check_ttl(ttl_seconds), user_metadata)
                await self.records.set_metadata(model.run_id, path.checkpoint_id, meta)
                return Outcome.json({"path": str(path), "type": answer_type})

            try:
                future = await save(model.backend)
            except Exception as error:
                pending.resolve(Outcome.failed(describe(error), "user"))
                return
            self.sessions.finish(pending, saved, lambda outcome: outcome)

        return await model.accept(seq_id, self.sessions.futures, submit)

    def _exists(self, model: TrainingModel, kind: str, name: str) -> bool:
        text = f"{SCHEME}{model.run_id}/{kind}/{name}"
        try:
            path = TinkerPath.parse(text)
        except CheckpointError:
            return False  # the backend refuses the name itself, with its own message
        return path.local.file(self.root).is_file()

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
            run = msgspec.structs.replace(
                source,
                model_id=model_id,
                session_id=session_id,
                user_metadata=request.user_metadata,
                created=time.time(),
            )
            folder = run_folder_name(model_id)
            backend = await anyio.to_thread.run_sync(new_backend, self.config, run, folder)
            try:
                await (await backend.load_state(str(path.local), request.optimizer))
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await backend.aclose()
                raise
            await self.records.write_run(run)
            self.sessions.add_model(TrainingModel(model_id, session_id, run, backend))
            return types.LoadWeightsResponse(path=str(path), model_id=model_id)

        self.sessions.finish(pending, create, sdk_json("load_weights"))
        return pending.request_id

    # -- listing, metadata and deleting -------------------------------------------------------

    async def entries(self, run_id: str) -> list[types.Checkpoint]:
        """The run's checkpoints, newest first; expired ones are deleted, not listed."""
        folder = self.records.run_folder(run_id)
        if not folder.is_dir():
            raise ServiceError(404, f"no training run {run_id!r} on this server")
        metadata = self.records.metadata(run_id)
        now = time.time()
        found: list[types.Checkpoint] = []
        for checkpoint in sorted(p for p in folder.iterdir() if p.is_dir()):
            for kind in PATH_KINDS:
                path = TinkerPath(run_id, CheckpointPath(folder.name, kind, checkpoint.name))
                file = path.local.file(self.root)
                if not file.is_file():
                    continue
                stat = file.stat()
                meta = metadata.get(path.checkpoint_id, CheckpointMeta(stat.st_mtime))
                if meta.expires_at is not None and meta.expires_at <= now:
                    await self.delete(str(path))
                    continue
                found.append(
                    types.Checkpoint(
                        checkpoint_id=path.checkpoint_id,
                        checkpoint_type=_CHECKPOINT_TYPES[kind],
                        time=_when(meta.created),
                        tinker_path=str(path),
                        size_bytes=stat.st_size,
                        public=meta.public,
                        user_metadata=meta.user_metadata,
                        expires_at=None if meta.expires_at is None else _when(meta.expires_at),
                    )
                )
        return sorted(found, key=lambda entry: entry.time, reverse=True)

    def existing(self, tinker_path: str) -> TinkerPath:
        """The path of a checkpoint that exists (else 404; a malformed path is 400)."""
        try:
            path = TinkerPath.parse(tinker_path)
        except CheckpointNotFound as error:
            raise ServiceError(404, describe(error)) from None
        except InvalidCheckpointPath as error:
            raise ServiceError(400, describe(error)) from None
        if not path.local.file(self.root).is_file():
            raise ServiceError(404, f"no checkpoint {path} on this server")
        return path

    async def update(self, tinker_path: str, **changes: object) -> None:
        """Change a checkpoint's metadata (``expires_at``, ``public``)."""
        path = self.existing(tinker_path)
        file = path.local.file(self.root)
        meta = self.records.metadata(path.run_id).get(
            path.checkpoint_id, CheckpointMeta(file.stat().st_mtime)
        )
        await self.records.set_metadata(
            path.run_id, path.checkpoint_id, msgspec.structs.replace(meta, **changes)
        )

    async def delete(self, tinker_path: str) -> None:
        path = self.existing(tinker_path)
        file = path.local.file(self.root)
        file.unlink()
        with contextlib.suppress(OSError):  # the folder may still hold the other kind
            file.parent.rmdir()
        await self.records.set_metadata(path.run_id, path.checkpoint_id, None)
