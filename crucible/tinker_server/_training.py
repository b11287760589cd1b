"""Creating training models and training them: forward_backward, optim_step, get_info."""

from __future__ import annotations

import math
import secrets
import time

import anyio.to_thread
from tinker import types
from tinker.proto import tinker_public_pb2 as pb

from crucible.tinker_server._checkpoints import Checkpoints
from crucible.tinker_server._config import ServerConfig
from crucible.tinker_server._errors import ServiceError, describe
from crucible.tinker_server._futures import Outcome, Pending, sdk_json
from crucible.tinker_server._models import (
    RunInfo,
    TrainingModel,
    check_base_model,
    local_lora,
    new_backend,
)
from crucible.tinker_server._paths import run_folder_name
from crucible.tinker_server._sessions import Sessions, model_id_of
from crucible.tinker_server._wire import (
    PROTOBUF,
    BadTensor,
    datums,
    encode_forward_backward_output,
    loss_fn_config,
)
from crucible.training import UnknownBaseModel


class Training:
    def __init__(self, config: ServerConfig, sessions: Sessions, checkpoints: Checkpoints) -> None:
        self.config = config
        self.sessions = sessions
        self.checkpoints = checkpoints

    async def create_model(self, request: types.CreateModelRequest) -> str:
        self.sessions.session(request.session_id)
        known = self.sessions.creating(request.session_id, request.model_seq_id)
        if known is not None:
            return known
        try:
            check_base_model(self.config, request.base_model)
        except UnknownBaseModel as error:
            raise ServiceError(400, describe(error)) from None
        if request.optimizer_config.type != "adamw":
            raise ServiceError(
                400, f"optimizer {request.optimizer_config.type!r} is not supported; use adamw"
            )
        lora = request.lora_config or types.LoraConfig(rank=32)
        model_id = model_id_of(request.session_id, request.model_seq_id)
        run = RunInfo(
            model_id=model_id,
            base_model=request.base_model,
            lora_rank=lora.rank,
            seed=lora.seed if lora.seed is not None else secrets.randbits(31),
            train_attn=lora.train_attn,
            train_mlp=lora.train_mlp,
            train_unembed=lora.train_unembed,
            session_id=request.session_id,
            user_metadata=request.user_metadata,
            created=time.time(),
        )
        try:
            local_lora(run)
        except ValueError as error:
            raise ServiceError(400, describe(error)) from None
        pending = self.sessions.create(request.session_id, request.model_seq_id)

        async def create() -> str:
            folder = run_folder_name(model_id)
            backend = await anyio.to_thread.run_sync(new_backend, self.config, run, folder)
            await self.checkpoints.records.write_run(run)
            self.sessions.add_model(TrainingModel(model_id, request.session_id, run, backend))
            return model_id

        self.sessions.finish(
            pending, create, lambda mid: Outcome.json({"model_id": mid, "type": "create_model"})
        )
        return pending.request_id

    # -- ordered by seq_id ---------------------------------------------------------------------

    async def forward_backward(self, message: pb.ForwardBackwardRequest) -> str:
        model = self.sessions.model(message.model_id)
        forward_only = message.forward_only
        loss_fn = message.loss_fn or "cross_entropy"
        config = loss_fn_config(message)

        async def submit(pending: Pending) -> None:
            try:
                data = datums(message)
            except BadTensor as error:
                pending.resolve(Outcome.failed(describe(error), "user"))
                return
            run = model.backend.forward if forward_only else model.backend.forward_backward
            await self.sessions.submit(pending, run(data, loss_fn, config), _proto_output)

        return await model.accept(message.seq_id, self.sessions.futures, submit)

    async def optim_step(self, request: types.OptimStepRequest) -> str:
        model = self.sessions.model(request.model_id)
        params = request.optim_params

        async def submit(pending: Pending) -> None:
            if isinstance(params, types.AdamParams):
                problem = adam_problem(params)
                if problem is None:
                    step = model.backend.optim_step(params)
                    await self.sessions.submit(pending, step, sdk_json(None))
                    return
            else:
                problem = f"optimizer params {params!r} are not AdamParams (this model uses adamw)"
            pending.resolve(Outcome.failed(f"ValueError: {problem}", "user"))

        return await model.accept(request.seq_id, self.sessions.futures, submit)

    async def save_weights_external(self, request: types.SaveWeightsExternalRequest) -> str:
        """Tinker exports the weights to its external-weights bucket and hands out signed URLs;
        a local server has no such bucket. The request fails alone (in its turn), so the
        client's later requests run."""
        model = self.sessions.model(request.model_id)

        async def submit(pending: Pending) -> None:
            pending.resolve(
                Outcome.failed(
                    "NotSupported: save_weights_external exports to Tinker's external-weights "
                    "bucket, which this local server does not have; the checkpoints of "
                    "save_state and save_weights_for_sampler are already files under the "
                    f"server's root ({self.config.root})",
                    "user",
                )
            )

        return await model.accept(request.seq_id, self.sessions.futures, submit)

    def info(self, model_id: str) -> types.GetInfoResponse:
        model = self.sessions.model(model_id)
        info = model.backend.info()
        # The name the client trained under (a served name or a directory); tokenizer_id stays
        # what the backend loaded (the shipped name or the directory), which the SDK's
        # get_tokenizer hands to AutoTokenizer.
        model_data = info.model_data.model_copy(update={"model_name": model.run.base_model})
        return info.model_copy(update={"model_id": model_id, "model_data": model_data})


def _proto_output(output: types.ForwardBackwardOutput) -> Outcome:
    return Outcome(encode_forward_backward_output(output), PROTOBUF)


def adam_problem(params: types.AdamParams) -> str | None:
    """What makes Adam's hyperparameters invalid (the checks torch.optim.AdamW makes, and
    finiteness), or None."""
    checks = (
        ("learning_rate", params.learning_rate, params.learning_rate >= 0.0),
        ("beta1", params.beta1, 0.0 <= params.beta1 < 1.0),
        ("beta2", params.beta2, 0.0 <= params.beta2 < 1.0),
        ("eps", params.eps, params.eps >= 0.0),
        ("weight_decay", params.weight_decay, params.weight_decay >= 0.0),
        ("grad_clip_norm", params.grad_clip_norm, params.grad_clip_norm >= 0.0),
    )
    for name, value, valid in checks:
        if not (valid and math.isfinite(value)):
            bounds = "in [0, 1)" if name.startswith("beta") else ">= 0 and finite"
            return f"Invalid {name}: {value} (AdamParams.{name} must be {bounds})"
    return None
