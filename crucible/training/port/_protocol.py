"""The TrainingBackend port, in the shape of Tinker's TrainingClient and SamplingClient.

Every operation is two-stage, as Tinker's plain methods are: ``await backend.op(...)`` submits
(and may wait for admission, back-pressure or an injected fault) and returns an awaitable
result; awaiting that gives the value. Operations run in submission order, one at a time per
model, so ``fb = await b.forward_backward(d); opt = await b.optim_step(p)`` pipelines both
before waiting for either. Results use the real ``tinker.types``; metric keys are
``name:reduction`` (for example ``loss:sum``) because the Tinker SDK splits every key on ":".
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from tinker import types


@runtime_checkable
class Tokenizer(Protocol):
    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]: ...

    def decode(self, tokens: Sequence[int]) -> str: ...


@runtime_checkable
class SamplingClient(Protocol):
    """Samples from fixed weights (a sampler checkpoint or a snapshot)."""

    async def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
    ) -> Awaitable[types.SampleResponse]:
        """Token sequences with per-token logprobs and a stop reason (``stop`` or ``length``)."""
        ...

    async def compute_logprobs(self, prompt: types.ModelInput) -> Awaitable[list[float | None]]:
        """The logprob of each prompt token given the ones before it (None for the first)."""
        ...


@runtime_checkable
class TrainingBackend(Protocol):
    """A LoRA training client: gradients accumulate over ``forward_backward`` calls until
    ``optim_step`` applies and clears them, exactly as Tinker's semantics."""

    @property
    def tokenizer(self) -> Tokenizer: ...

    def info(self) -> types.GetInfoResponse: ...

    async def forward_backward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> Awaitable[types.ForwardBackwardOutput]:
        """Loss and gradients for ``data``, added to the accumulated gradients.

        ``loss_fn`` is one of Tinker's loss functions (``cross_entropy``, or an RL loss such as
        ``importance_sampling`` or ``ppo`` whose datums carry sampling ``logprobs`` and
        ``advantages``); ``loss_fn_config`` holds its settings (clip thresholds, ``beta``).
        Each datum's ``loss_fn_outputs`` entry has ``logprobs`` (of its target tokens) and
        ``elementwise_loss``; metrics include ``loss:sum`` (the loss summed over the batch)."""
        ...

    async def forward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> Awaitable[types.ForwardBackwardOutput]:
        """As ``forward_backward`` without gradients (evaluation)."""
        ...

    async def optim_step(self, adam_params: types.AdamParams) -> Awaitable[types.OptimStepResponse]:
        """One Adam step with these hyperparameters over the accumulated gradients."""
        ...

    async def save_state(self, name: str) -> Awaitable[types.SaveWeightsResponse]:
        """Weights, optimizer state and step, for resuming. Saving a name again replaces it."""
        ...

    async def load_state(
        self, path: str, with_optimizer: bool = True
    ) -> Awaitable[types.LoadWeightsResponse]:
        """Restore a ``save_state`` checkpoint exactly; clears accumulated gradients."""
        ...

    async def save_weights_for_sampler(
        self, name: str
    ) -> Awaitable[types.SaveWeightsForSamplerResponse]:
        """Weights only, for ``sampling_client(path)``."""
        ...

    async def delete_checkpoint(self, path: str) -> Awaitable[None]:
        """Delete a state or sampler checkpoint; deleting a missing one is not an error."""
        ...

    async def sampling_client(self, path: str | None = None) -> Awaitable[SamplingClient]:
        """A client over sampler weights at ``path``, or over a snapshot of the current
        weights (taken in submission order) when ``path`` is None."""
        ...

    async def aclose(self) -> None:
        """Finish submitted work and release the backend."""
        ...


def loss_args(loss_fn: str, loss_fn_config: Mapping[str, float | str] | None) -> tuple[Any, ...]:
    """The arguments after ``data`` that a wrapper passes on to ``forward_backward`` or
    ``forward``: the config only when one was given, so the default call stays the two-argument
    call that backends written before ``loss_fn_config`` (and test doubles) take."""
    return (loss_fn,) if loss_fn_config is None else (loss_fn, loss_fn_config)
