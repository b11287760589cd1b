"""Shared data and helpers for the training tests (imported as a top-level module, as pytest
puts this folder on sys.path)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from tinker import types

from crucible.training import SamplingClient
from crucible.training.backends.local import ByteTokenizer, LoraConfig
from crucible.training.port import DeferredResult

T = TypeVar("T")

TOKENIZER = ByteTokenizer()
SMALL_LORA = LoraConfig(rank=4, alpha=8.0)


def make_datum(text: str, *, prompt_chars: int = 0) -> types.Datum:
    """``<|bos|> text <|eos|>`` shifted by one; tokens of the first ``prompt_chars`` chars get
    weight 0, as a renderer does for prompt tokens."""
    ids = [TOKENIZER.bos_token_id, *TOKENIZER.encode(text), TOKENIZER.eos_token_id]
    weights = [0.0 if i < prompt_chars else 1.0 for i in range(len(ids) - 1)]
    return types.Datum(
        model_input=types.ModelInput.from_ints(ids[:-1]),
        loss_fn_inputs={"target_tokens": ids[1:], "weights": weights},
    )


TINY_TASK = [make_datum(f"{a} + {a} = {2 * a}", prompt_chars=5) for a in range(10, 18)]
ADAM = types.AdamParams(learning_rate=1e-2)


async def _value(value: T) -> T:
    return value


class RecordingBackend:
    """A backend without a model: it records which ops were applied, in order."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.tokenizer = TOKENIZER

    def _apply(self, op: str, value: T) -> DeferredResult[T]:
        self.applied.append(op)
        return DeferredResult(lambda: _value(value))

    def info(self) -> types.GetInfoResponse:
        return types.GetInfoResponse(model_id="fake", model_data=types.ModelData())

    async def forward_backward(
        self, data: Sequence[types.Datum], loss_fn: str = "cross_entropy"
    ) -> DeferredResult[types.ForwardBackwardOutput]:
        output = types.ForwardBackwardOutput("ArrayRecord", [], {"loss:sum": float(len(data))})
        return self._apply("forward_backward", output)

    async def forward(
        self, data: Sequence[types.Datum], loss_fn: str = "cross_entropy"
    ) -> DeferredResult[types.ForwardBackwardOutput]:
        return self._apply("forward", types.ForwardBackwardOutput("ArrayRecord", [], {}))

    async def optim_step(
        self, adam_params: types.AdamParams
    ) -> DeferredResult[types.OptimStepResponse]:
        return self._apply("optim_step", types.OptimStepResponse(metrics={}))

    async def save_state(self, name: str) -> DeferredResult[types.SaveWeightsResponse]:
        return self._apply("save_state", types.SaveWeightsResponse(path=f"fake://{name}"))

    async def load_state(
        self, path: str, with_optimizer: bool = True
    ) -> DeferredResult[types.LoadWeightsResponse]:
        return self._apply("load_state", types.LoadWeightsResponse(path=path))

    async def save_weights_for_sampler(
        self, name: str
    ) -> DeferredResult[types.SaveWeightsForSamplerResponse]:
        return self._apply(
            "save_weights_for_sampler", types.SaveWeightsForSamplerResponse(path=f"fake://{name}")
        )

    async def delete_checkpoint(self, path: str) -> DeferredResult[None]:
        return self._apply("delete_checkpoint", None)

    async def sampling_client(self, path: str | None = None) -> DeferredResult[SamplingClient]:
        return self._apply("sampling_client", RecordingSampler(self))

    async def aclose(self) -> None:
        pass


class RecordingSampler:
    def __init__(self, backend: RecordingBackend) -> None:
        self._backend = backend

    async def sample(
        self, prompt: types.ModelInput, num_samples: int, sampling_params: types.SamplingParams
    ) -> DeferredResult[types.SampleResponse]:
        return self._backend._apply("sample", types.SampleResponse(sequences=[]))

    async def compute_logprobs(
        self, prompt: types.ModelInput
    ) -> DeferredResult[list[float | None]]:
        return self._backend._apply("compute_logprobs", [None])
