"""Sampling and prompt logprobs over fixed weights (runs on the backend's worker thread)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tinker import types

from crucible.training.backends.local._model import TinyTransformer
from crucible.training.backends.local._tokenizer import ByteTokenizer
from crucible.training.port import InvalidDatum


class Sampler:
    """Autoregressive sampling with temperature, top-k, top-p, stop sequences and a seed.

    Reported logprobs are the model's own (temperature 1, before top-k/top-p), so they match
    what ``forward`` and ``compute_logprobs`` give for the same tokens. Without a seed in the
    SamplingParams, seeds come from a counter started at the sampler's seed, so a run is
    reproducible either way.
    """

    def __init__(self, model: TinyTransformer, tokenizer: ByteTokenizer, seed: int) -> None:
        self._model = model.eval()
        self._tokenizer = tokenizer
        self._seeds = itertools.count(seed)
        self._sequence_ids = itertools.count()

    @property
    def context_length(self) -> int:
        return self._model.config.context_length

    def _stop_sequences(self, stop: str | Sequence[str] | Sequence[int] | None) -> list[list[int]]:
        if stop is None:  # Tinker: None keeps the implicit end-of-sequence stops
            return [[self._tokenizer.eos_token_id], [self._tokenizer.special_id("<|end|>")]]
        if isinstance(stop, str):
            return [self._tokenizer.encode(stop)]
        return [
            self._tokenizer.encode(item) if isinstance(item, str) else [int(item)] for item in stop
        ]

    def _prompt_tokens(self, prompt: types.ModelInput) -> list[int]:
        tokens = prompt.to_ints()
        if not tokens:
            raise InvalidDatum("the prompt is empty; give at least one token (e.g. <|bos|>)")
        if len(tokens) > self.context_length:
            raise InvalidDatum(
                f"prompt of {len(tokens)} tokens exceeds the context length {self.context_length}"
            )
        vocab = self._tokenizer.vocab_size
        if any(not 0 <= token < vocab for token in tokens):
            raise InvalidDatum(f"prompt has token ids outside the vocabulary 0..{vocab - 1}")
        return tokens

    @torch.no_grad()
    def sample(
        self, prompt: types.ModelInput, num_samples: int, params: types.SamplingParams
    ) -> types.SampleResponse:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if params.temperature < 0 or not 0 < params.top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and 0 < top_p <= 1, got {params.temperature}, "
                f"{params.top_p}"
            )
        tokens = self._prompt_tokens(prompt)
        room = self.context_length - len(tokens)
        budget = room if params.max_tokens is None else min(params.max_tokens, room)
        seed = params.seed if params.seed is not None else next(self._seeds)
        generator = torch.Generator().manual_seed(seed)
        stops = self._stop_sequences(params.stop)

        generated: list[list[int]] = [[] for _ in range(num_samples)]
        logprobs: list[list[float]] = [[] for _ in range(num_samples)]
        stopped = [False] * num_samples
        for _ in range(budget):
            active = [i for i in range(num_samples) if not stopped[i]]
            if not active:
                break
            context = torch.tensor([tokens + generated[i] for i in active])
            last_logits = self._model(context)[:, -1, :].float()
            choices = self._choose(last_logits, params, generator)
            model_logprobs = F.log_softmax(last_logits, dim=-1)
            for row, index in enumerate(active):
                token = int(choices[row])
                generated[index].append(token)
                logprobs[index].append(float(model_logprobs[row, token]))
                stopped[index] = any(
                    generated[index][-len(stop) :] == stop for stop in stops if stop
                )
        sequences = [
            types.SampledSequence(
                stop_reason="stop" if stopped[i] else "length",
                sequence_id=f"local-seq-{next(self._sequence_ids)}",
                tokens_np=np.asarray(generated[i], dtype=np.int32),
                logprobs_np=np.asarray(logprobs[i], dtype=np.float32),
            )
            for i in range(num_samples)
        ]
        return types.SampleResponse(sequences=sequences)

    @staticmethod
    def _choose(
        logits: torch.Tensor, params: types.SamplingParams, generator: torch.Generator
    ) -> torch.Tensor:
        if params.temperature == 0:
            return logits.argmax(dim=-1)
        scaled = logits / params.temperature
        if params.top_k > 0:
            kth = torch.topk(scaled, min(params.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        if params.top_p < 1:
            ordered, order = torch.sort(scaled, dim=-1, descending=True)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            # drop a token once the tokens before it already cover top_p (the first always stays)
            drop_sorted = cumulative - ordered.softmax(dim=-1) >= params.top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            scaled = scaled.masked_fill(drop, float("-inf"))
        probabilities = scaled.softmax(dim=-1)
        return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)

    @torch.no_grad()
    def compute_logprobs(self, prompt: types.ModelInput) -> list[float | None]:
        tokens = self._prompt_tokens(prompt)
        logits = self._model(torch.tensor([tokens]))[0].float()
        logprobs = F.log_softmax(logits[:-1], dim=-1)
        following = torch.tensor(tokens[1:]).unsqueeze(-1)
        values = logprobs.gather(-1, following).squeeze(-1).tolist()
        return [None, *values]
