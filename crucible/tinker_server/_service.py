"""The state and operations of the local Tinker-compatible server, independent of HTTP.

Sessions own training models (one ``LocalBackend`` each) and sampling sessions. Mutating
operations answer with a request id at once; the work runs in the server's task group and its
outcome lands in the FutureTable for ``retrieve_future``. Every identifier the SDK derives
itself is honoured: models are ``<session>:train:<model_seq_id>`` (the SDK builds that id on its
own after create-via-load) and sampling sessions ``<session>:sample:<seq>``.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import attrs
import msgspec
from anyio.abc import TaskGroup
from tinker import types
from tinker.proto import tinker_public_pb2 as pb

from crucible.tinker_server._config import ServerConfig
from crucible.tinker_server._errors import ServiceError, category, describe
from crucible.tinker_server._futures import FutureTable, Outcome, Pending
from crucible.tinker_server._models import TrainingModel
from crucible.tinker_server._paths import RunInfo, TinkerPath, run_folder_name, run_info_file
from crucible.tinker_server._wire import (
    PROTOBUF,
    BadTensor,
    datums,
    encode_forward_backward_output,
    encode_sample_response,
)
from crucible.training import CheckpointNotFound, UnknownBaseModel
from crucible.training.local import (
    BASE_MODELS,
    LORA_TARGETS,
    LocalBackend,
    LocalBackendConfig,
    LocalSamplingClient,
    LoraConfig,
)

T = TypeVar("T")
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("up_proj", "down_proj")


def local_lora(run: RunInfo) -> LoraConfig:
    """Tinker's LoRA switches on the local model: attention is q/k/v/o, the MLP is up/down;
    the local models have no LoRA on the unembedding. alpha = 2 * rank (the local backend's
    default scale of 2)."""
    targets = (_ATTENTION if run.train_attn else ()) + (_MLP if run.train_mlp else ())
    if not targets:
        raise ValueError(
            "this server's models need train_attn or train_mlp: they have no LoRA on the "
            "unembedding alone"
        )
    assert set(targets) <= set(LORA_TARGETS)
    return LoraConfig(rank=run.lora_rank, alpha=2.0 * run.lora_rank, target_modules=targets)


def _check_base_model(name: str) -> None:
    if name not in BASE_MODELS:
        raise UnknownBaseModel(
            f"unknown base model {name!r}; this server serves {', '.join(sorted(BASE_MODELS))}"
        )


@attrs.define
class SessionRecord:
    session_id: str
    finished: bool = False
    model_ids: list[str] = attrs.field(factory=list)


@attrs.define
class Sampler:
    sampler_id: str
    base_model: str
    model_path: str | None
    client: LocalSamplingClient


class TinkerService:
    def __init__(self, config: ServerConfig, task_group: TaskGroup) -> None:
        self.config = config
        self.root = config.root
        self.futures = FutureTable()
        self._tasks = task_group
        self.sessions: dict[str, SessionRecord] = {}
        self.models: dict[str, TrainingModel] = {}
        self._finished_models: set[str] = set()
        self.samplers: dict[str, Sampler] = {}
        # Retried requests (after a lost answer) map to the first answer.
        self._created_sessions: dict[str, str] = {}
        self._created_models: dict[tuple[str, int], str] = {}
        self._created_samplers: dict[tuple[str, int], str] = {}
        self._samples: dict[tuple[str, int], tuple[str, list[str]]] = {}
        self._hosts: dict[tuple[str, int, tuple[str, ...]], LocalBackend] = {}
        self._host_lock = anyio.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    def _finish(
        self,
        pending: Pending,
        work: Callable[[], Awaitable[T]],
        encode: Callable[[T], Outcome],
    ) -> None:
        """Run ``work`` in the server's task group and store its outcome for retrieval."""

        async def run() -> None:
            try:
                result = await work()
            except Exception as error:
                pending.resolve(Outcome.failed(describe(error), category(error)))
            else:
                pending.resolve(encode(result))

        self._tasks.start_soon(run)

    def _backend(self, run: RunInfo, run_id: str) -> LocalBackend:
        return LocalBackend(
            LocalBackendConfig(
                base_model=run.base_model,
                lora=local_lora(run),
                seed=run.seed,
                checkpoint_root=self.root,
                run_id=run_folder_name(run_id),
                num_threads=self.config.torch_threads,
            )
        )

    def session(self, session_id: str) -> SessionRecord:
        record = self.sessions.get(session_id)
        if record is None:
            raise ServiceError(404, f"no session {session_id!r} on this server")
        if record.finished:
            raise ServiceError(410, f"session {session_id!r} has finished")
        return record

    def model(self, model_id: str) -> TrainingModel:
        model = self.models.get(model_id)
        if model is None and model_id in self._finished_models:
            raise ServiceError(410, f"the session of model {model_id!r} has finished")
        if model is None:
            raise ServiceError(404, f"no training model {model_id!r} on this server")
        self.session(model.session_id)
        return model

    # -- sessions ---------------------------------------------------------------------------

    def create_session(self, idempotency_key: str | None) -> str:
        if idempotency_key and idempotency_key in self._created_sessions:
            return self._created_sessions[idempotency_key]
        session_id = uuid.uuid4().hex[:16]
        self.sessions[session_id] = SessionRecord(session_id)
        if idempotency_key:
            self._created_sessions[idempotency_key] = session_id
        return session_id

    def heartbeat(self, session_id: str) -> None:
        self.session(session_id)

    async def finish_session(self, session_id: str) -> None:
        record = self.sessions.get(session_id)
        if record is None or record.finished:
            return
        record.finished = True
        for model_id in record.model_ids:
            model = self.models.pop(model_id, None)
            self._finished_models.add(model_id)
            if model is not None:
                self._tasks.start_soon(model.backend.aclose)

    # -- creating models ----------------------------------------------------------------------

    async def create_model(self, request: types.CreateModelRequest) -> str:
        record = self.session(request.session_id)
        key = (request.session_id, request.model_seq_id)
        if key in self._created_models:
            return self._created_models[key]
        try:
            _check_base_model(request.base_model)
        except UnknownBaseModel as error:
            raise ServiceError(400, describe(error)) from None
        if request.optimizer_config.type != "adamw":
            raise ServiceError(
                400, f"optimizer {request.optimizer_config.type!r} is not supported; use adamw"
            )
        lora = request.lora_config or types.LoraConfig(rank=32)
        model_id = f"{request.session_id}:train:{request.model_seq_id}"
        run = RunInfo(
            model_id=model_id,
            base_model=request.base_model,
            lora_rank=lora.rank,
            seed=lora.seed if lora.seed is not None else secrets.randbits(31),
            train_attn=lora.train_attn,
            train_mlp=lora.train_mlp,
            train_unembed=lora.train_unembed,
        )
        try:
            local_lora(run)
        except ValueError as error:
            raise ServiceError(400, describe(error)) from None
        pending = self.futures.new()
        self._created_models[key] = pending.request_id

        async def create() -> str:
            backend = await anyio.to_thread.run_sync(self._backend, run, model_id)
            await self._write_run_info(run)
            self.models[model_id] = TrainingModel(model_id, request.session_id, run, backend)
            record.model_ids.append(model_id)
            return model_id

        self._finish(
            pending, create, lambda mid: Outcome.json({"model_id": mid, "type": "create_model"})
        )
        return pending.request_id

    async def _write_run_info(self, run: RunInfo) -> None:
        file = run_info_file(self.root, run.model_id)

        def write() -> None:
            file.parent.mkdir(parents=True, exist_ok=True)
            temporary = file.with_suffix(".tmp")
            temporary.write_bytes(msgspec.json.encode(run))
            temporary.replace(file)

        await anyio.to_thread.run_sync(write)

    async def _read_run_info(self, run_id: str) -> RunInfo:
        file = run_info_file(self.root, run_id)
        try:
            raw = await anyio.Path(file).read_bytes()
        except FileNotFoundError:
            raise CheckpointNotFound(f"no training run {run_id!r} on this server") from None
        return msgspec.json.decode(raw, type=RunInfo)

    async def create_from_state(self, request: types.LoadWeightsRequest) -> str:
        """``create_training_client_from_state*``: a new model whose seq 0 loads a checkpoint."""
        session_id, model_seq_id = request.session_id, request.model_seq_id
        assert session_id is not None and model_seq_id is not None
        record = self.session(session_id)
        key = (session_id, model_seq_id)
        if key in self._created_models:
            return self._created_models[key]
        model_id = f"{request.session_id}:train:{request.model_seq_id}"
        pending = self.futures.new()
        self._created_models[key] = pending.request_id

        async def create() -> types.LoadWeightsResponse:
            path = TinkerPath.parse(request.path)
            source = await self._read_run_info(path.run_id)
            if request.base_model is not None and request.base_model != source.base_model:
                raise UnknownBaseModel(
                    f"{request.path} was trained on {source.base_model!r}, not "
                    f"{request.base_model!r}; this server cannot move checkpoints across models"
                )
            run = msgspec.structs.replace(source, model_id=model_id)
            backend = await anyio.to_thread.run_sync(self._backend, run, model_id)
            try:
                await (await backend.load_state(path.local, request.optimizer))
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await backend.aclose()
                raise
            await self._write_run_info(run)
            self.models[model_id] = TrainingModel(model_id, session_id, run, backend)
            record.model_ids.append(model_id)
            return types.LoadWeightsResponse(path=str(path), model_id=model_id)

        self._finish(pending, create, _json_result("load_weights"))
        return pending.request_id

    # -- training operations (ordered by seq_id) -------------------------------------------------

    async def forward_backward(self, message: pb.ForwardBackwardRequest) -> str:
        model = self.model(message.model_id)
        forward_only = message.forward_only
        loss_fn = message.loss_fn or "cross_entropy"

        async def submit(pending: Pending) -> None:
            try:
                data = datums(message)
            except BadTensor as error:
                pending.resolve(Outcome.failed(describe(error), "user"))
                return
            run = model.backend.forward if forward_only else model.backend.forward_backward
            await self._submit(pending, run(data, loss_fn), _proto_output)

        return await model.accept(message.seq_id, self.futures, submit)

    async def optim_step(self, request: types.OptimStepRequest) -> str:
        model = self.model(request.model_id)
        params = request.optim_params

        async def submit(pending: Pending) -> None:
            if not isinstance(params, types.AdamParams):
                pending.resolve(
                    Outcome.failed(
                        f"ValueError: optimizer params {params!r} are not AdamParams", "user"
                    )
                )
                return
            await self._submit(pending, model.backend.optim_step(params), _json_result(None))

        return await model.accept(request.seq_id, self.futures, submit)

    async def save_weights(self, request: types.SaveWeightsRequest) -> str:
        model = self.model(request.model_id)
        name = request.path or f"checkpoint-{request.seq_id}"

        async def submit(pending: Pending) -> None:
            await self._submit(
                pending,
                model.backend.save_state(name),
                lambda saved: _path_result(saved.path, model, "save_weights"),
            )

        return await model.accept(request.seq_id, self.futures, submit)

    async def load_weights(self, request: types.LoadWeightsRequest) -> str:
        assert request.model_id is not None
        model = self.model(request.model_id)

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

            await self._submit(
                pending, model.backend.load_state(path.local, request.optimizer), answer
            )

        return await model.accept(request.seq_id, self.futures, submit)

    async def save_weights_for_sampler(self, request: types.SaveWeightsForSamplerRequest) -> str:
        model = self.model(request.model_id)

        async def submit(pending: Pending) -> None:
            if request.path is not None:
                await self._submit(
                    pending,
                    model.backend.save_weights_for_sampler(request.path),
                    lambda saved: _path_result(saved.path, model, "save_weights_for_sampler"),
                )
                return
            # An unnamed save is a snapshot served by a new sampling session.
            sampler_id = f"{model.session_id}:sample:{request.sampling_session_seq_id}"

            def register(client: LocalSamplingClient) -> Outcome:
                self.samplers[sampler_id] = Sampler(sampler_id, model.run.base_model, None, client)
                return Outcome.json(
                    {"sampling_session_id": sampler_id, "type": "save_weights_for_sampler"}
                )

            await self._submit(pending, model.backend.sampling_client(None), register)

        return await model.accept(request.seq_id, self.futures, submit)

    async def _submit(
        self, pending: Pending, submission: Awaitable[Awaitable[T]], encode: Callable[[T], Outcome]
    ) -> None:
        """Queue on the backend now (in seq order); await the result in the task group."""
        try:
            future = await submission
        except Exception as error:
            pending.resolve(Outcome.failed(describe(error), category(error)))
            return

        async def result() -> T:
            return await future

        self._finish(pending, result, encode)

    def info(self, model_id: str) -> types.GetInfoResponse:
        model = self.model(model_id)
        info = model.backend.info()
        return info.model_copy(update={"model_id": model_id})

    # -- sampling ----------------------------------------------------------------------------

    async def _host(self, run: RunInfo) -> LocalBackend:
        """A backend that only builds samplers, one per (base model, LoRA shape)."""
        lora = local_lora(run)
        key = (run.base_model, lora.rank, lora.target_modules)
        async with self._host_lock:
            host = self._hosts.get(key)
            if host is None:
                host = await anyio.to_thread.run_sync(self._backend, run, "sampler-host")
                self._hosts[key] = host
            return host

    async def create_sampling_session(self, request: types.CreateSamplingSessionRequest) -> str:
        self.session(request.session_id)
        key = (request.session_id, request.sampling_session_seq_id)
        if key in self._created_samplers:
            return self._created_samplers[key]
        sampler_id = f"{request.session_id}:sample:{request.sampling_session_seq_id}"
        try:
            if request.model_path is not None:
                path = TinkerPath.parse(request.model_path)
                run = await self._read_run_info(path.run_id)
                host = await self._host(run)
                client = await (await host.sampling_client(path.local))
                base_model = run.base_model
            elif request.base_model is not None:
                _check_base_model(request.base_model)
                run = RunInfo("base", request.base_model, lora_rank=1, seed=0)
                client = await (await (await self._host(run)).sampling_client(None))
                base_model = request.base_model
            else:
                raise ValueError("create_sampling_session needs model_path or base_model")
        except CheckpointNotFound as error:
            raise ServiceError(404, describe(error)) from None
        except ValueError as error:  # bad path, unknown base model, mismatched checkpoint
            raise ServiceError(400, describe(error)) from None
        self.samplers[sampler_id] = Sampler(sampler_id, base_model, request.model_path, client)
        self._created_samplers[key] = sampler_id
        return sampler_id

    def sampler(self, sampler_id: str) -> Sampler:
        sampler = self.samplers.get(sampler_id)
        if sampler is None:
            raise ServiceError(404, f"no sampling session {sampler_id!r} on this server")
        return sampler

    async def sample(self, request: types.SampleRequest) -> tuple[str, list[str]]:
        if request.sampling_session_id is None or request.seq_id is None:
            raise ServiceError(400, "asample needs sampling_session_id and seq_id")
        sampler = self.sampler(request.sampling_session_id)
        unsupported = [
            name
            for name, value in (
                ("topk_prompt_logprobs", request.topk_prompt_logprobs),
                ("topk_sample_logprobs", request.topk_sample_logprobs),
                ("prompt_alt_tokens_k", request.prompt_alt_tokens_k),
                ("target_prompt_logprobs", request.target_prompt_logprobs is not None),
            )
            if value
        ]
        if unsupported:
            raise ServiceError(400, f"this server does not support {', '.join(unsupported)}")
        key = (request.sampling_session_id, request.seq_id)
        if key in self._samples:
            return self._samples[key]
        pending = self.futures.new()
        ids = [f"{pending.request_id}:{index}" for index in range(request.num_samples)]
        self._samples[key] = (pending.request_id, ids)
        last_n = request.prompt_logprobs_last_n

        async def run() -> bytes:
            response = await (
                await sampler.client.sample(
                    request.prompt, request.num_samples, request.sampling_params
                )
            )
            prompt_logprobs: list[float | None] | None = None
            if request.prompt_logprobs:
                prompt_logprobs = await (await sampler.client.compute_logprobs(request.prompt))
                if last_n is not None:
                    keep = len(prompt_logprobs) - last_n
                    unscored: list[float | None] = [None] * keep
                    prompt_logprobs = unscored + prompt_logprobs[keep:]
            return encode_sample_response(response, prompt_logprobs)

        self._finish(pending, run, lambda body: Outcome(body, PROTOBUF))
        return pending.request_id, ids

    # -- checkpoints and capabilities ----------------------------------------------------------

    def list_checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        folder = self.root / run_folder_name(run_id)
        if not folder.is_dir():
            raise ServiceError(404, f"no training run {run_id!r} on this server")
        found: list[tuple[float, dict[str, Any]]] = []
        for checkpoint in sorted(p for p in folder.iterdir() if p.is_dir()):
            for file_name, kind, checkpoint_type in (
                ("state.pt", "weights", "training"),
                ("sampler.pt", "sampler_weights", "sampler"),
            ):
                file = checkpoint / file_name
                if not file.is_file():
                    continue
                stat = file.stat()
                path = TinkerPath(run_id, kind, checkpoint.name)  # type: ignore[arg-type]
                found.append(
                    (
                        stat.st_mtime,
                        {
                            "checkpoint_id": path.checkpoint_id,
                            "checkpoint_type": checkpoint_type,
                            "time": dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC).isoformat(),
                            "tinker_path": str(path),
                            "size_bytes": stat.st_size,
                        },
                    )
                )
        return [entry for _mtime, entry in sorted(found, key=lambda item: item[0], reverse=True)]

    def delete_checkpoint(self, run_id: str, kind: str, name: str) -> None:
        try:
            path = TinkerPath.parse(f"tinker://{run_id}/{kind}/{name}")
        except ValueError as error:
            raise ServiceError(400, describe(error)) from None
        file_name = "state.pt" if path.kind == "weights" else "sampler.pt"
        file = self.root / run_folder_name(run_id) / name / file_name
        if not file.is_file():
            raise ServiceError(404, f"no checkpoint {path}")
        file.unlink()

    def capabilities(self) -> list[dict[str, Any]]:
        return [
            {
                "model_name": name,
                "max_context_length": spec.config.context_length,
                "trainable": True,
                "sampleable": True,
            }
            for name, spec in sorted(BASE_MODELS.items())
        ]

    async def aclose(self) -> None:
        backends = [model.backend for model in self.models.values()] + list(self._hosts.values())
        self.models.clear()
        self._hosts.clear()
        for backend in backends:
            await backend.aclose()


def _proto_output(output: types.ForwardBackwardOutput) -> Outcome:
    return Outcome(encode_forward_backward_output(output), PROTOBUF)


def _json_result(kind: str | None) -> Callable[[Any], Outcome]:
    def encode(result: Any) -> Outcome:
        payload = result.model_dump(mode="json", exclude_none=True)
        if kind is not None:
            payload["type"] = kind
        return Outcome.json(payload)

    return encode


def _path_result(local_path: str, model: TrainingModel, kind: str) -> Outcome:
    path = TinkerPath.from_local(local_path, model.run_id)
    return Outcome.json({"path": str(path), "type": kind})
