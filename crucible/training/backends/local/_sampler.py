"""Batched, KV-cached sampling over fixed adapter weights (runs on the backend's worker thread).

Requests that are waiting together are decoded as one batch: prompts are left-padded, the
prompt is run once, and each step feeds one new token per row through the KV cache. Each
request draws from its own seeded generator, so its samples do not depend on which other
requests shared the batch (up to float rounding in the batched matmuls).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from tinker import types

from crucible.training.port import InvalidDatum

if TYPE_CHECKING:
    from crucible.training.backends.local._engine import LocalEngine

#: Most rows decoded together; more requests are taken in several batches.
MAX_BATCH_ROWS: Final = 256


@attrs.define
class SampleRequest:
    prompt: list[int]
    num_samples: int
    params: types.SamplingParams
    include_prompt_logprobs: bool = False


@attrs.define
class _Row:
    request: int
    generator: torch.Generator
    prompt_length: int
    tokens: list[int] = attrs.field(factory=list)
    logprobs: list[float] = attrs.field(factory=list)
    stop_reason: str | None = None


class Sampler:
    """Sampling with temperature, top-k, top-p, stop strings and tokens, a seed and
    ``num_samples``; end-of-sequence always stops a sample, whatever the stop list.

    Reported logprobs are the model's own (temperature 1, before top-k/top-p), so they match
    what ``forward`` and ``compute_logprobs`` give for the same tokens. Without a seed in the
    SamplingParams, seeds come from a counter started at the sampler's seed.
    """

    def __init__(self, engine: LocalEngine, weights: dict[str, torch.Tensor], seed: int) -> None:
        self._engine = engine
        self._weights = weights
        self._seeds = itertools.count(seed)
        self._sequence_ids = itertools.count()

    @property
    def context_length(self) -> int:
        return self._engine.context_length

    @property
    def tokenizer(self) -> Any:
        return self._engine.tokenizer

    # ---- checks --------------------------------------------------------------------------

    def check(self, request: SampleRequest) -> None:
        """Refuse a bad request before it joins a batch (a ValueError names the problem)."""
        params = request.params
        if request.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {request.num_samples}")
        if params.temperature < 0 or not 0 < params.top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and 0 < top_p <= 1, got {params.temperature}, "
                f"{params.top_p}"
            )
        self.check_prompt(request.prompt)

    def check_prompt(self, tokens: Sequence[int]) -> None:
        if not tokens:
            raise InvalidDatum("the prompt is empty; give at least one token")
        if len(tokens) > self.context_length:
            raise InvalidDatum(
                f"prompt of {len(tokens)} tokens exceeds the context length {self.context_length}"
            )
        vocab = self._engine.vocab_size
        if any(not 0 <= token < vocab for token in tokens):
            raise InvalidDatum(f"prompt has token ids outside the vocabulary 0..{vocab - 1}")

    def _stops(self, params: types.SamplingParams) -> tuple[set[int], list[str]]:
        """Stop tokens (always including end-of-sequence) and stop strings."""
        tokens = set(self.tokenizer.eos_token_ids)
        strings: list[str] = []
        stop = params.stop
        items: Sequence[str | int] = (
            [] if stop is None else [stop] if isinstance(stop, str) else stop
        )
        for item in items:
            if isinstance(item, str):
                if item:
                    strings.append(item)
            else:
                tokens.add(int(item))
        return tokens, strings

    # ---- sampling ------------------------------------------------------------------------

    def sample(
        self, prompt: types.ModelInput, num_samples: int, params: types.SamplingParams
    ) -> types.SampleResponse:
        request = SampleRequest(prompt.to_ints(), num_samples, params)
        self.check(request)
        return self.sample_batch([request])[0]

    @torch.no_grad()
    def sample_batch(self, requests: Sequence[SampleRequest]) -> list[types.SampleResponse]:
        """Decode ``requests`` together (in batches of at most MAX_BATCH_ROWS rows)."""
        responses: list[types.SampleResponse] = []
        group: list[SampleRequest] = []
        rows = 0
        with self._engine.adapters(self._weights) as model:
            for request in requests:
                if group and rows + request.num_samples > MAX_BATCH_ROWS:
                    responses += self._decode(model, group)
                    group, rows = [], 0
                group.append(request)
                rows += request.num_samples
            if group:
                responses += self._decode(model, group)
        return responses

    def _decode(self, model: Any, requests: Sequence[SampleRequest]) -> list[types.SampleResponse]:
        device = self._engine.device
        rows: list[_Row] = []
        for index, request in enumerate(requests):
            seed = request.params.seed if request.params.seed is not None else next(self._seeds)
            generator = torch.Generator().manual_seed(seed)
            done = None if self._budget(request) > 0 else "length"
            rows += [
                _Row(index, generator, len(request.prompt), stop_reason=done)
                for _ in range(request.num_samples)
            ]
        width = max(len(r.prompt) for r in requests)
        ids = torch.full((len(rows), width), self._engine.pad_token_id, dtype=torch.int64)
        mask = torch.zeros((len(rows), width), dtype=torch.int64)
        for position, row in enumerate(rows):
            prompt = requests[row.request].prompt
            ids[position, width - len(prompt) :] = torch.tensor(prompt)
            mask[position, width - len(prompt) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        logits = out.logits[:, -1, :].float()
        prompt_logprobs = self._prompt_logprobs(requests, rows, out.logits, ids, width)
        cache = _cache_of(out)
        cache_arg = _cache_argument(model)
        stops = [self._stops(r.params) for r in requests]
        budgets = [self._budget(r) for r in requests]
        next_positions = positions[:, -1]
        for step in range(max(budgets, default=0)):
            choices = self._choose(logits, rows, requests)
            logprobs = F.log_softmax(logits, dim=-1)
            for position, row in enumerate(rows):
                if row.stop_reason is not None:
                    continue
                token = int(choices[position])
                row.tokens.append(token)
                row.logprobs.append(float(logprobs[position, token]))
                row.stop_reason = self._stopped(row, *stops[row.request], budgets[row.request])
            if all(row.stop_reason is not None for row in rows) or step + 1 == max(budgets):
                break
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], 1)
            next_positions = next_positions + 1
            out = model(
                input_ids=choices.view(-1, 1).to(device),
                attention_mask=mask,
                position_ids=next_positions.view(-1, 1),
                use_cache=True,
                **{cache_arg: cache},
            )
            cache = _cache_of(out)
            logits = out.logits[:, -1, :].float()
        return [
            self._response(
                [row for row in rows if row.request == index], prompt_logprobs.get(index)
            )
            for index in range(len(requests))
        ]

    def _budget(self, request: SampleRequest) -> int:
        room = self.context_length - len(request.prompt)
        wanted = request.params.max_tokens
        return max(0, room if wanted is None else min(wanted, room))

    def _stopped(self, row: _Row, tokens: set[int], strings: list[str], budget: int) -> str | None:
        if row.tokens[-1] in tokens:
            return "stop"
        if strings:
            longest = max(len(s) for s in strings)
            # a token is at least one character (or part of one): this tail holds any match
            tail = self.tokenizer.decode(row.tokens[-(longest + 4) :])
            if any(s in tail for s in strings):
                return "stop"
        return "length" if len(row.tokens) >= budget else None

    def _choose(
        self, logits: torch.Tensor, rows: Sequence[_Row], requests: Sequence[SampleRequest]
    ) -> torch.Tensor:
        """Each request's rows, chosen with that request's parameters and generator."""
        choices = logits.argmax(dim=-1).cpu()
        start = 0
        while start < len(rows):
            index = rows[start].request
            end = start
            while end < len(rows) and rows[end].request == index:
                end += 1
            params = requests[index].params
            if params.temperature > 0 and any(r.stop_reason is None for r in rows[start:end]):
                probabilities = _filtered(logits[start:end].cpu(), params)
                choices[start:end] = torch.multinomial(
                    probabilities, 1, generator=rows[start].generator
                ).squeeze(-1)
            start = end
        return choices

    def _prompt_logprobs(
        self,
        requests: Sequence[SampleRequest],
        rows: Sequence[_Row],
        logits: torch.Tensor,
        ids: torch.Tensor,
        width: int,
    ) -> dict[int, list[float | None]]:
        result: dict[int, list[float | None]] = {}
        for position, row in enumerate(rows):
            request = requests[row.request]
            if not request.include_prompt_logprobs or row.request in result:
                continue
            start = width - len(request.prompt)
            values = F.log_softmax(logits[position, start:-1].float(), dim=-1)
            following = ids[position, start + 1 :].unsqueeze(-1)
            result[row.request] = [None, *values.gather(-1, following).squeeze(-1).tolist()]
        return result

    def _response(
        self, rows: Sequence[_Row], prompt_logprobs: list[float | None] | None
    ) -> types.SampleResponse:
        sequences = [
            types.SampledSequence(
                stop_reason="stop" if row.stop_reason == "stop" else "length",
                sequence_id=f"local-seq-{next(self._sequence_ids)}",
                tokens_np=np.asarray(row.tokens, dtype=np.int32),
                logprobs_np=np.asarray(row.logprobs, dtype=np.float32),
            )
            for row in rows
        ]
        if prompt_logprobs is None:
            return types.SampleResponse(sequences=sequences)
        return types.SampleResponse(sequences=sequences, _prompt_logprobs_list=prompt_logprobs)

    @torch.no_grad()
    def compute_logprobs(self, prompt: types.ModelInput) -> list[float | None]:
        tokens = prompt.to_ints()
        self.check_prompt(tokens)
        with self._engine.adapters(self._weights) as model:
            ids = torch.tensor([tokens], device=self._engine.device)
            logits = model(input_ids=ids, use_cache=False).logits[0].float()
        logprobs = F.log_softmax(logits[:-1], dim=-1)
        following = ids[0, 1:].unsqueeze(-1)
        values = logprobs.gather(-1, following).squeeze(-1).tolist()
        return [None, *values]


def _filtered(logits: torch.Tensor, params: types.SamplingParams) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p."""
    scaled = logits / params.temperature
    if params.top_k > 0:
        kth = torch.topk(scaled, min(params.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1:
        ordered, order = torch.sort(scaled, dim=-1, descending=True)
        probabilities = ordered.softmax(dim=-1)
        # drop a token once the tokens before it already cover top_p (the first always stays)
        drop_sorted = probabilities.cumsum(dim=-1) - probabilities >= params.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled.softmax(dim=-1)


def _cache_of(output: Any) -> Any:
    """The KV cache of a forward pass (``cache`` since transformers 5.2x, before that
    ``past_key_values``)."""
    cache = output.get("cache")  # not .get(.., default): reading the old name warns
    return cache if cache is not None else output.get("past_key_values")


def _cache_argument(model: Any) -> str:
    forward = model.get_base_model().forward if hasattr(model, "get_base_model") else model.forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
