"""Sampling through an SDK SamplingClient."""

from __future__ import annotations

from typing import Any

from tinker import types

from crucible.training.backends.tinker._bridge import SdkBridge, in_sdk_context
from crucible.training.port import BackendFuture


class TinkerSamplingClient:
    """Samples through an SDK SamplingClient; failures become Crucible errors."""

    def __init__(self, sampler: Any, sdk: SdkBridge) -> None:
        self.sampler = sampler
        self._sdk = sdk

    async def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
    ) -> BackendFuture[types.SampleResponse]:
        sample = self.sampler.sample
        future = in_sdk_context(sample, prompt, num_samples, sampling_params).future()
        return BackendFuture(self._sdk.bridge("sample", future))

    async def compute_logprobs(self, prompt: types.ModelInput) -> BackendFuture[list[float | None]]:
        future = in_sdk_context(self.sampler.compute_logprobs, prompt).future()
        return BackendFuture(self._sdk.bridge("compute_logprobs", future))
