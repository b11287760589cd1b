"""Sampling sessions: from a base model, a saved checkpoint, or the weights of a training model.

Samplers of saved checkpoints and base models are built by a host backend, one per base model
and LoRA shape, that only builds samplers. An unnamed save of a training model's weights is
``kind="snapshot"`` (the sampler keeps the weights of that moment) or ``kind="inflight"``: as
Tinker documents it, every inflight sampler of a model shares one mutable target, and each
later inflight save moves that target, for existing inflight samplers too.
"""

from __future__ import annotations

import anyio
import anyio.to_thread
import attrs
from tinker import types

from crucible.tinker_server._checkpoints import Checkpoints
from crucible.tinker_server._config import ServerConfig
from crucible.tinker_server._errors import ServiceError, describe
from crucible.tinker_server._futures import Outcome, Pending
from crucible.tinker_server._models import RunInfo, check_base_model, local_lora, new_backend
from crucible.tinker_server._paths import TinkerPath
from crucible.tinker_server._sessions import Sessions, sampler_id_of
from crucible.tinker_server._wire import PROTOBUF, encode_sample_response
from crucible.training import CheckpointNotFound
from crucible.training.backends.local import LocalBackend, LocalSamplingClient


@attrs.define
class WeightsTarget:
    """The weights a sampler samples from; shared by a model's inflight samplers."""

    client: LocalSamplingClient


@attrs.define
class Sampler:
    sampler_id: str
    base_model: str
    model_path: str | None
    target: WeightsTarget

    @property
    def client(self) -> LocalSamplingClient:
        return self.target.client


class Sampling:
    def __init__(self, config: ServerConfig, sessions: Sessions, checkpoints: Checkpoints) -> None:
        self.config = config
        self.sessions = sessions
        self.checkpoints = checkpoints
        self.samplers: dict[str, Sampler] = {}
        self._created_samplers: dict[tuple[str, int], str] = {}
        self._samples: dict[tuple[str, int], tuple[str, list[str]]] = {}
        self._hosts: dict[tuple[str, int, tuple[str, ...]], LocalBackend] = {}
        self._host_lock = anyio.Lock()
        self._inflight: dict[str, WeightsTarget] = {}  # model id -> its inflight target

    async def _host(self, run: RunInfo) -> LocalBackend:
        lora = local_lora(run)
        key = (run.base_model, lora.rank, lora.target_modules)
        async with self._host_lock:
            host = self._hosts.get(key)
            if host is None:
                host = await anyio.to_thread.run_sync(new_backend, self.config, run, "sampler-host")
                self._hosts[key] = host
            return host

    async def create_sampling_session(self, request: types.CreateSamplingSessionRequest) -> str:
        self.sessions.session(request.session_id)
        key = (request.session_id, request.sampling_session_seq_id)
        if key in self._created_samplers:
            return self._created_samplers[key]
        sampler_id = sampler_id_of(request.session_id, request.sampling_session_seq_id)
        try:
            if request.model_path is not None:
                path = TinkerPath.parse(request.model_path)
                run = await self.checkpoints.read_run(path.run_id)
                host = await self._host(run)
                client = await (await host.sampling_client(str(path.local)))
                base_model = run.base_model
            elif request.base_model is not None:
                check_base_model(self.config, request.base_model)
                run = RunInfo("base", request.base_model, lora_rank=1, seed=0)
                client = await (await (await self._host(run)).sampling_client(None))
                base_model = request.base_model
            else:
                raise ValueError("create_sampling_session needs model_path or base_model")
        except CheckpointNotFound as error:
            raise ServiceError(404, describe(error)) from None
        except ValueError as error:  # bad path, unknown base model, mismatched checkpoint
            raise ServiceError(400, describe(error)) from None
        self.samplers[sampler_id] = Sampler(
            sampler_id, base_model, request.model_path, WeightsTarget(client)
        )
        self._created_samplers[key] = sampler_id
        self.sessions.add_sampler(request.session_id, sampler_id)
        return sampler_id

    async def snapshot(self, request: types.SaveWeightsForSamplerRequest) -> str:
        """An unnamed ``save_weights_for_sampler``: the model's current weights (in the model's
        seq_id order) become a new sampling session, fixed (snapshot) or shared (inflight)."""
        model = self.sessions.model(request.model_id)
        sampler_id = sampler_id_of(model.session_id, request.sampling_session_seq_id)
        inflight = request.kind == "inflight"

        async def submit(pending: Pending) -> None:
            def register(client: LocalSamplingClient) -> Outcome:
                target = self._inflight.get(model.model_id) if inflight else None
                if target is None:
                    target = WeightsTarget(client)
                    if inflight:
                        self._inflight[model.model_id] = target
                else:
                    target.client = client  # every inflight sampler of the model moves on
                self.samplers[sampler_id] = Sampler(sampler_id, model.run.base_model, None, target)
                self.sessions.add_sampler(model.session_id, sampler_id)
                return Outcome.json(
                    {"sampling_session_id": sampler_id, "type": "save_weights_for_sampler"}
                )

            await self.sessions.submit(pending, model.backend.sampling_client(None), register)

        return await model.accept(request.seq_id, self.sessions.futures, submit)

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
        pending = self.sessions.futures.new()
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

        self.sessions.finish(pending, run, lambda body: Outcome(body, PROTOBUF))
        return pending.request_id, ids

    async def aclose(self) -> None:
        hosts = list(self._hosts.values())
        self._hosts.clear()
        for host in hosts:
            await host.aclose()
