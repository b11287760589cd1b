"""Evaluation on held-out conversations: NLL per token, and exact match from greedy sampling.

The default ``Evaluator`` adapter. NLL uses ``forward`` (no gradients) over the rendered test
conversations; accuracy samples each prompt greedily from a snapshot of the current weights
(or from a saved sampler checkpoint) and compares the answer with the expected last assistant
turn, ignoring surrounding whitespace. All requests are submitted before any is awaited, so
the backend's queue never runs dry and the local backend decodes them as batches.

Prompts are fitted to ``max_length`` as training examples are: a prompt plus ``max_tokens``
must fit, so the oldest turns (after a system message) are dropped until it does; a problem
whose last turn alone is too long is skipped and counted (``eval/skipped``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Sequence
from typing import Protocol, runtime_checkable

import attrs
from tinker import types

from crucible.recipes._data import Conversation
from crucible.recipes._render import ChatRenderer, TrainOn, datum_weight, fit_prompt
from crucible.training import SamplingClient, TrainingBackend


@attrs.frozen
class EvalResult:
    nll: float  # mean negative log-likelihood per trained token on the test set
    accuracy: float  # exact match over the sampled examples
    per_task: dict[str, float] = attrs.field(factory=dict)
    examples: int = 0
    skipped: int = 0  # problems whose prompt does not fit max_length even with turns dropped

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        values = {f"{prefix}/nll": self.nll, f"{prefix}/accuracy": self.accuracy}
        if self.skipped:
            values[f"{prefix}/skipped"] = float(self.skipped)
        values.update({f"{prefix}/accuracy/{task}": acc for task, acc in self.per_task.items()})
        return values


@runtime_checkable
class Evaluator(Protocol):
    """The evaluator port."""

    async def evaluate(
        self, client: TrainingBackend, sampler_path: str | None = None
    ) -> EvalResult: ...


@attrs.frozen
class SamplingEvaluator:
    renderer: ChatRenderer
    test: Sequence[Conversation]
    train_on: TrainOn = "all_assistant"
    max_length: int = 64
    examples: int = 200
    max_tokens: int = 12
    batch_size: int = 64

    def _subset(self) -> list[Conversation]:
        # Interleave tasks so a small `examples` still covers each of them.
        by_task: dict[str | None, list[Conversation]] = defaultdict(list)
        for conversation in self.test:
            by_task[conversation.task].append(conversation)
        chosen: list[Conversation] = []
        queues = [list(reversed(group)) for group in by_task.values()]
        while len(chosen) < min(self.examples, len(self.test)):
            for queue in queues:
                if queue and len(chosen) < self.examples:
                    chosen.append(queue.pop())
        return chosen

    async def evaluate(
        self, client: TrainingBackend, sampler_path: str | None = None
    ) -> EvalResult:
        subset = self._subset()
        if not subset:
            return EvalResult(float("nan"), float("nan"))
        nll = await self._nll(client, subset)
        sampler: SamplingClient = await (await client.sampling_client(sampler_path))
        greedy = types.SamplingParams(
            max_tokens=self.max_tokens, temperature=0.0, seed=0, stop=self.renderer.stop
        )
        pending: list[tuple[Conversation, str, Awaitable[types.SampleResponse]]] = []
        budget = max(1, self.max_length - self.max_tokens)
        skipped = 0
        for conversation in subset:
            history, answer = conversation.split_last_answer()
            prompt = fit_prompt(self.renderer, history, budget)
            if prompt is None:
                skipped += 1
                continue
            pending.append((conversation, answer, await sampler.sample(prompt, 1, greedy)))
        right: dict[str, list[bool]] = defaultdict(list)
        for conversation, answer, future in pending:
            response = await future
            text = self.renderer.tokenizer.decode(response.sequences[0].tokens)
            correct = self.renderer.strip_answer(text) == answer.strip()
            right[conversation.task or "all"].append(correct)
        every = [ok for group in right.values() for ok in group]
        per_task = {task: sum(v) / len(v) for task, v in sorted(right.items()) if task != "all"}
        accuracy = sum(every) / len(every) if every else float("nan")
        return EvalResult(nll, accuracy, per_task, len(every), skipped)

    async def _nll(self, client: TrainingBackend, subset: Sequence[Conversation]) -> float:
        data = [self.renderer.datum(c, self.train_on, self.max_length) for c in subset]
        futures: list[Awaitable[types.ForwardBackwardOutput]] = []
        for start in range(0, len(data), self.batch_size):
            futures.append(await client.forward(data[start : start + self.batch_size]))
        loss = 0.0
        for future in futures:
            loss += (await future).metrics["loss:sum"]
        weight = sum(datum_weight(d) for d in data)
        return loss / weight if weight else float("nan")
