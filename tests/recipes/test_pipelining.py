"""The sl_basic loop submits ahead: step s+1's work is queued before step s's results are
awaited (the property bench.loop measures; here checked on the order of calls, not time)."""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from typing import Any

import pytest
from tinker import types

from crucible.metrics import MemoryMetricsStore
from crucible.recipes import Context, EvalResult, TaskDatasetStore, TrainConfig, run_workflow
from crucible.recipes.sl_basic import SL_BASIC, SLState
from crucible.training.backends.local import ByteTokenizer

pytestmark = pytest.mark.anyio


class _Logged:
    def __init__(self, log: list[str], name: str, value: Any) -> None:
        self.log, self.name, self.value = log, name, value

    def __await__(self) -> Generator[Any, None, Any]:
        self.log.append(f"await {self.name}")
        return self.value
        yield  # a generator: awaitable without suspending


class RecordingBackend:
    tokenizer = ByteTokenizer()

    def __init__(self) -> None:
        self.log: list[str] = []
        self.steps = 0

    async def forward_backward(self, data: Sequence[types.Datum], loss_fn: str) -> _Logged:
        self.steps += 1
        self.log.append(f"submit fb{self.steps}")
        output = types.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord", loss_fn_outputs=[], metrics={"loss:sum": 1.0}
        )
        return _Logged(self.log, f"fb{self.steps}", output)

    async def optim_step(self, adam: types.AdamParams) -> _Logged:
        self.log.append(f"submit optim{self.steps}")
        return _Logged(self.log, f"optim{self.steps}", types.OptimStepResponse(metrics={}))


class _NoEvaluation:
    async def evaluate(self, client: Any, sampler_path: str | None = None) -> EvalResult:
        return EvalResult(math.nan, math.nan)


async def test_the_next_step_is_submitted_before_the_last_result_is_awaited() -> None:
    backend = RecordingBackend()
    config = TrainConfig(
        tasks=("addition",),
        batch_size=2,
        max_steps=6,
        save_every=3,
        eval_every=0,
        eval_at_start=False,
        warmup_steps=0,
    )
    store = MemoryMetricsStore()
    ctx: Context[TrainConfig, SLState] = Context(
        config,
        {
            "training_client": backend,
            "dataset_store": TaskDatasetStore(tasks=("addition",)),
            "metrics_store": store,
            "evaluator": _NoEvaluation(),
        },
        SLState(run_id="order"),
    )
    await run_workflow(SL_BASIC, ctx)
    log = backend.log
    for step in (1, 2, 4, 5):  # step 3 is drained for its checkpoint, 6 is the last
        assert log.index(f"submit fb{step + 1}") < log.index(f"await optim{step}"), log
        assert log.index(f"submit optim{step + 1}") < log.index(f"await optim{step}"), log
    # A checkpoint step is finished (and its metrics recorded) before the next is submitted.
    assert log.index("await optim3") < log.index("submit fb4")
    losses = await store.read("order", metric="train/loss")
    assert [record.step for record in losses] == [1, 2, 3, 4, 5, 6]
