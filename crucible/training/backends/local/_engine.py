"""The synchronous training engine of the local backend: one model, its LoRA adapters and
their Adam state. Only the backend's single worker thread calls into it, one op at a time."""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import torch
from tinker import types

from crucible.training.backends.local._base_models import (
    DEFAULT_BASE_MODEL,
    context_length,
    load_base_model,
)
from crucible.training.backends.local._batch import Batch, build_batch
from crucible.training.backends.local._files import read_checkpoint, write_atomically
from crucible.training.backends.local._lora import (
    LoraConfig,
    apply_lora,
    lora_parameters,
    lora_state_dict,
)
from crucible.training.backends.local._losses import LOSS_FNS, elementwise_loss
from crucible.training.backends.local._paths import CheckpointPath, PathKind, check_segment
from crucible.training.backends.local._sampler import Sampler
from crucible.training.port import CheckpointCorrupt, CheckpointMismatch

STATE_FORMAT: Final = "crucible-local-state/1"
SAMPLER_FORMAT: Final = "crucible-local-sampler/1"
#: The loss functions this backend implements (see ``_losses``).
SUPPORTED_LOSS_FNS: Final = LOSS_FNS


def _new_run_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


@attrs.frozen
class LocalBackendConfig:
    """What the local backend trains and where its checkpoints go.

    ``base_model``: a shipped model name, a local Hugging Face model directory, or a model id
    in the Hugging Face cache (never downloaded). ``device``: None picks CUDA in bfloat16 when
    present, else CPU in float32. ``seed`` fixes the LoRA initialisation and the default
    sampling seeds: the same config and the same ops give bitwise-equal weights.
    ``num_threads`` (process-wide in torch) is set when given; bitwise equality holds for a
    fixed thread count.
    """

    base_model: str = DEFAULT_BASE_MODEL
    lora: LoraConfig = attrs.field(factory=LoraConfig)
    seed: int = 0
    checkpoint_root: Path = attrs.field(default=Path("runs/checkpoints"), converter=Path)
    run_id: str = attrs.field(factory=_new_run_id)
    num_threads: int | None = None
    device: str | None = None

    @run_id.validator
    def _check_run_id(self, _attribute: Any, value: str) -> None:
        check_segment(value, "run id")


class LocalEngine:
    def __init__(self, config: LocalBackendConfig) -> None:
        self.config = config
        device = None if config.device is None else torch.device(config.device)
        base, self.tokenizer = load_base_model(config.base_model, device)
        self.device = next(base.parameters()).device
        self.context_length = context_length(base)
        self.vocab_size = int(base.get_input_embeddings().weight.shape[0])
        self.pad_token_id = _pad_id(self.tokenizer)
        # eval mode throughout: no dropout, so training and sampling compute the same function
        self.model: Any = apply_lora(base, config.lora, config.seed)
        self.step = 0
        self.optimizer = self._new_optimizer()
        # Samplers without an explicit seed draw from distinct, reproducible seed streams.
        self._sampler_seeds = itertools.count(config.seed << 20)

    def _new_optimizer(self) -> torch.optim.AdamW:
        # Hyperparameters are set from the AdamParams of every step; these are placeholders.
        # foreach=False keeps the simple per-parameter loop (deterministic, fast at this size).
        return torch.optim.AdamW(list(lora_parameters(self.model).values()), lr=0.0, foreach=False)

    # ---- forward / backward -------------------------------------------------------------

    def _batch(
        self,
        data: Sequence[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None,
    ) -> Batch:
        return build_batch(
            data,
            loss_fn,
            loss_fn_config,
            context=self.context_length,
            vocab=self.vocab_size,
            pad_token_id=self.pad_token_id,
            device=self.device,
        )

    def _loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's loss (the sum of the elementwise loss, as Tinker's losses are), the
        elementwise loss and the target logprobs.

        Rows are right-padded and attention is causal, so no real token ever attends to
        padding: no attention mask is needed (which keeps SDPA on its fast causal path)."""
        with _no_padding_advice():
            logits = self.model(input_ids=batch.inputs, use_cache=False).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        target_logprobs = logprobs.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
        elementwise = elementwise_loss(
            batch.loss_fn,
            target_logprobs,
            batch.weights,
            batch.sampling_logprobs,
            batch.advantages,
            batch.config,
        )
        return elementwise.sum(), elementwise, target_logprobs

    def _output(
        self,
        batch: Batch,
        loss: torch.Tensor,
        elementwise: torch.Tensor,
        target_logprobs: torch.Tensor,
    ) -> types.ForwardBackwardOutput:
        logprobs_out = target_logprobs.detach().float().cpu()
        elementwise_out = elementwise.detach().float().cpu()
        outputs = [
            {
                "logprobs": types.TensorData.from_torch(logprobs_out[row, :length]),
                "elementwise_loss": types.TensorData.from_torch(elementwise_out[row, :length]),
            }
            for row, length in enumerate(batch.lengths)
        ]
        return types.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord",
            loss_fn_outputs=outputs,
            metrics={
                "loss:sum": float(loss.detach()),
                "num_tokens:sum": float(sum(batch.lengths)),
                "weights:sum": float(batch.weights.sum()),
            },
        )

    def forward_backward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> types.ForwardBackwardOutput:
        """Gradients are added to those of earlier calls until optim_step (accumulation)."""
        batch = self._batch(data, loss_fn, loss_fn_config)
        loss, elementwise, target_logprobs = self._loss(batch)
        loss.backward()  # type: ignore[no-untyped-call]
        return self._output(batch, loss, elementwise, target_logprobs)

    def forward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> types.ForwardBackwardOutput:
        batch = self._batch(data, loss_fn, loss_fn_config)
        with torch.no_grad():
            loss, elementwise, target_logprobs = self._loss(batch)
        return self._output(batch, loss, elementwise, target_logprobs)

    # ---- optimizer -----------------------------------------------------------------------

    def optim_step(self, adam: types.AdamParams) -> types.OptimStepResponse:
        parameters = list(lora_parameters(self.model).values())
        gradients = [p.grad for p in parameters if p.grad is not None]
        grad_norm = float(torch.nn.utils.get_total_norm(gradients)) if gradients else 0.0
        if adam.grad_clip_norm > 0 and gradients:
            torch.nn.utils.clip_grads_with_norm_(
                parameters, adam.grad_clip_norm, torch.tensor(grad_norm)
            )
        for group in self.optimizer.param_groups:
            group["lr"] = adam.learning_rate
            group["betas"] = (adam.beta1, adam.beta2)
            group["eps"] = adam.eps
            group["weight_decay"] = adam.weight_decay
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return types.OptimStepResponse(
            metrics={
                "grad_norm:mean": grad_norm,
                "learning_rate:mean": adam.learning_rate,
                "step:max": float(self.step),
            }
        )

    # ---- checkpoints ---------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return {"base_model": self.config.base_model, "lora": attrs.asdict(self.config.lora)}

    def _path(self, kind: PathKind, name: str) -> CheckpointPath:
        return CheckpointPath(self.config.run_id, kind, check_segment(name, "checkpoint name"))

    def _write(self, kind: PathKind, name: str) -> CheckpointPath:
        """Write a checkpoint: the adapter weights and step, plus the Adam state for a state
        checkpoint (a sampler checkpoint needs the weights only)."""
        path = self._path(kind, name)
        payload: dict[str, Any] = {
            "format": STATE_FORMAT if kind == "weights" else SAMPLER_FORMAT,
            **self._identity(),
            "step": self.step,
            "lora_state": lora_state_dict(self.model),
        }
        if kind == "weights":
            payload["optimizer"] = copy.deepcopy(self.optimizer.state_dict())
        write_atomically(payload, path.file(self.config.checkpoint_root))
        return path

    def save_state(self, name: str) -> types.SaveWeightsResponse:
        return types.SaveWeightsResponse(path=str(self._write("weights", name)))

    def save_weights_for_sampler(self, name: str) -> types.SaveWeightsForSamplerResponse:
        return types.SaveWeightsForSamplerResponse(path=str(self._write("sampler_weights", name)))

    def _check_identity(self, path: CheckpointPath, payload: dict[str, Any]) -> None:
        missing = sorted({"step", "lora_state"} - payload.keys())
        if missing:
            raise CheckpointCorrupt(f"checkpoint {path} lacks {', '.join(missing)}")
        expected = self._identity()
        found = {key: payload.get(key) for key in expected}
        if found != expected:
            raise CheckpointMismatch(
                f"checkpoint {path} was trained with {found}, but this backend has {expected}"
            )
        state = payload.get("lora_state")
        own = lora_parameters(self.model)
        if not isinstance(state, dict) or set(state) != set(own):
            raise CheckpointMismatch(f"checkpoint {path} has other LoRA tensors than this model")
        for key, parameter in own.items():
            if state[key].shape != parameter.shape:
                raise CheckpointMismatch(
                    f"checkpoint {path}: {key} has shape {tuple(state[key].shape)}, the model "
                    f"expects {tuple(parameter.shape)}"
                )

    def load_state(self, path_text: str, with_optimizer: bool) -> types.LoadWeightsResponse:
        path = CheckpointPath.parse(path_text)
        if path.kind != "weights":
            raise CheckpointMismatch(
                f"{path} holds sampler weights only; load_state needs a save_state checkpoint "
                "(local://<run>/weights/<name>)"
            )
        payload = read_checkpoint(path, self.config.checkpoint_root, STATE_FORMAT)
        self._check_identity(path, payload)
        optimizer = self._new_optimizer()
        if with_optimizer:
            try:
                optimizer.load_state_dict(payload["optimizer"])
            except (KeyError, ValueError) as error:
                raise CheckpointMismatch(
                    f"checkpoint {path} has an optimizer state that does not fit: {error}"
                ) from error
        with torch.no_grad():
            for key, parameter in lora_parameters(self.model).items():
                parameter.copy_(payload["lora_state"][key])
                parameter.grad = None  # loading discards gradients accumulated before it
        self.optimizer = optimizer
        self.step = int(payload["step"])
        return types.LoadWeightsResponse(path=str(path), model_id=self.model_id)

    def delete_checkpoint(self, path_text: str) -> None:
        file = CheckpointPath.parse(path_text).file(self.config.checkpoint_root)
        file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the folder may still hold the other kind
            file.parent.rmdir()

    # ---- sampling ------------------------------------------------------------------------

    def sampler(self, path_text: str | None) -> Sampler:
        """A sampler over a checkpoint's weights, or over a copy of the current weights."""
        if path_text is None:
            weights = lora_state_dict(self.model)
        else:
            path = CheckpointPath.parse(path_text)
            expected = STATE_FORMAT if path.kind == "weights" else SAMPLER_FORMAT
            payload = read_checkpoint(path, self.config.checkpoint_root, expected)
            self._check_identity(path, payload)
            weights = payload["lora_state"]
        return Sampler(self, weights, seed=next(self._sampler_seeds))

    @contextlib.contextmanager
    def adapters(self, weights: dict[str, torch.Tensor]) -> Iterator[Any]:
        """The model with ``weights`` in its adapters for the duration (a sampler's weights);
        the training weights are put back bit for bit after. Only the worker thread calls it,
        so no training op can run in between."""
        own = lora_parameters(self.model)
        saved = {key: parameter.detach().clone() for key, parameter in own.items()}
        with torch.no_grad():
            for key, parameter in own.items():
                parameter.copy_(weights[key])
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for key, parameter in own.items():
                    parameter.copy_(saved[key])

    # ---- info ----------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return f"{self.config.run_id}:train:0"

    def info(self) -> types.GetInfoResponse:
        return types.GetInfoResponse(
            model_id=self.model_id,
            model_data=types.ModelData(
                arch=type(self.model.get_base_model()).__name__,
                model_name=self.config.base_model,
                tokenizer_id=self.config.base_model,
            ),
            is_lora=True,
            lora_rank=self.config.lora.rank,
            model_name=self.config.base_model,
        )


def _pad_id(tokenizer: Any) -> int:
    """Padding never reaches a real token (right padding, causal attention): any id works."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), tokenizer.eos_token_ids):
        if isinstance(candidate, int):
            return candidate
        if isinstance(candidate, tuple) and candidate:
            return int(candidate[0])
    return 0


class _DropPaddingAdvice(logging.Filter):
    """transformers advises an attention mask whenever a row holds the pad token; the training
    rows are right-padded under causal attention, where the advice does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "strongly recommend passing in an `attention_mask`" not in record.getMessage()


@contextlib.contextmanager
def _no_padding_advice() -> Iterator[None]:
    logger = logging.getLogger("transformers.modeling_utils")
    advice = _DropPaddingAdvice()
    logger.addFilter(advice)
    try:
        yield
    finally:
        logger.removeFilter(advice)
