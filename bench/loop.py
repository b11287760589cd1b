"""The training loop against a simulated remote backend: ``python -m bench.loop``.

The backend is a remote server that runs operations one at a time, in submission order, each
taking ``C`` of compute; every request and every reply spends ``L/2`` on the wire (a round
trip of ``L``). A loop that awaits each call before the next (the baseline) pays ``2(C + L)``
per step; a loop that keeps the next step queued at the server while it waits for the last
one's results can reach the server's own limit, ``1/(2C)`` steps per second.

Measured in the same run: the sequential loop, and the ``sl_basic`` recipe's own workflow (its
real stages, runner, telemetry spans and metrics store) on the same simulated backend.
Targets: the recipe at >= 1.8x the sequential loop and >= 95% of the ideal 1/(2C).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup
from rich.console import Console
from rich.table import Table
from tinker import types

from crucible.metrics import MemoryMetricsStore
from crucible.recipes import (
    ChatRenderer,
    Context,
    EvalResult,
    TaskDatasetStore,
    TrainConfig,
    datum_weight,
    run_workflow,
)
from crucible.recipes.sl_basic import SL_BASIC, SLState
from crucible.telemetry import attach, detach
from crucible.training.backends.local import ByteTokenizer


class _Reply:
    """The client's view of one submitted operation: set when the reply has crossed back."""

    def __init__(self, value: Any) -> None:
        self._value = value
        self._arrived = anyio.Event()

    def arrive(self) -> None:
        self._arrived.set()

    async def _wait(self) -> Any:
        await self._arrived.wait()
        return self._value

    def __await__(self) -> Any:
        return self._wait().__await__()


@attrs.define
class SimulatedRemoteBackend:
    """A TrainingBackend whose ops run in order on one simulated server (see module doc).

    The server's schedule is computed, not slept in steps: an op starts when it has arrived
    and the previous op has finished, ends ``compute_s`` later, and its reply lands
    ``latency_s / 2`` after that; the client sleeps until that absolute moment. Timer
    overshoot therefore never accumulates on the server side.
    """

    tasks: TaskGroup
    compute_s: float
    latency_s: float
    server_free_at: float = 0.0
    ops: int = 0
    tokenizer: ByteTokenizer = attrs.field(factory=ByteTokenizer)

    def _submit(self, value: Any) -> _Reply:
        now = time.perf_counter()
        start = max(now + self.latency_s / 2, self.server_free_at)
        self.server_free_at = start + self.compute_s
        reply = _Reply(value)
        self.tasks.start_soon(_deliver, reply, self.server_free_at + self.latency_s / 2)
        self.ops += 1
        return reply

    async def forward_backward(self, data: Sequence[types.Datum], loss_fn: str = "") -> _Reply:
        weights = float(sum(datum_weight(d) for d in data))
        return self._submit(
            types.ForwardBackwardOutput(
                loss_fn_output_type="ArrayRecord",
                loss_fn_outputs=[],
                metrics={"loss:sum": weights, "weights:sum": weights},
            )
        )

    async def optim_step(self, adam: types.AdamParams) -> _Reply:
        return self._submit(types.OptimStepResponse(metrics={"grad_norm:mean": 1.0}))


async def _deliver(reply: _Reply, at: float) -> None:
    await anyio.sleep(max(0.0, at - time.perf_counter()))
    reply.arrive()


class _NoEvaluation:
    async def evaluate(self, client: Any, sampler_path: str | None = None) -> EvalResult:
        return EvalResult(nll=math.nan, accuracy=math.nan)


def _batches(steps: int, batch_size: int) -> list[list[types.Datum]]:
    splits = TaskDatasetStore(tasks=("addition",)).load_sync()
    renderer = ChatRenderer(ByteTokenizer())
    data = [renderer.datum(c, "all_assistant", 64) for c in splits.train[: steps * batch_size]]
    return [data[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


async def sequential_loop(steps: int, batch_size: int, compute_s: float, latency_s: float) -> float:
    """Await each call before the next (the baseline). Returns steps per second."""
    batches = _batches(steps, batch_size)
    adam = types.AdamParams(learning_rate=1e-3)
    async with anyio.create_task_group() as tasks:
        backend = SimulatedRemoteBackend(tasks, compute_s, latency_s)
        started = time.perf_counter()
        for batch in batches:
            await (await backend.forward_backward(batch))
            await (await backend.optim_step(adam))
        elapsed = time.perf_counter() - started
    return steps / elapsed


async def recipe_loop(steps: int, batch_size: int, compute_s: float, latency_s: float) -> float:
    """The sl_basic workflow (its own stages) on the simulated backend. Returns steps per
    second, timed from the first step's submission to the last step's result."""
    config = TrainConfig(
        tasks=("addition",),
        batch_size=batch_size,
        max_steps=steps,
        eval_every=0,
        eval_at_start=False,
        save_every=0,
        warmup_steps=0,
    )
    marks: list[float] = []

    def on_step(_name: str, _m: Mapping[str, Any], metadata: Mapping[str, Any], _c: Any) -> None:
        marks.append(time.perf_counter())

    async with anyio.create_task_group() as tasks:
        backend = SimulatedRemoteBackend(tasks, compute_s, latency_s)
        store = MemoryMetricsStore()
        ctx: Context[TrainConfig, SLState] = Context(
            config,
            {
                "training_client": backend,
                "dataset_store": TaskDatasetStore(tasks=("addition",)),
                "metrics_store": store,
                "evaluator": _NoEvaluation(),
            },
            SLState(run_id="bench"),
        )
        first_submit: list[float] = []

        def on_stage(_n: str, _m: Mapping[str, Any], metadata: Mapping[str, Any], _c: Any) -> None:
            if metadata.get("stage") == "forward_backward" and not first_submit:
                first_submit.append(time.perf_counter())

        attach("bench.loop.step", "crucible_train.batch.stop", on_step)
        attach("bench.loop.stage", "crucible_kitchen.stage.run.start", on_stage)
        try:
            await run_workflow(SL_BASIC, ctx)
        finally:
            detach("bench.loop.step")
            detach("bench.loop.stage")
        assert len(marks) == steps, f"{len(marks)} steps logged, expected {steps}"
        count = len(await store.read("bench", metric="train/loss"))
        assert count == steps, f"{count} loss records, expected {steps}"
    return steps / (marks[-1] - first_submit[0])


async def _best_of(fn: Any, rounds: int, *args: Any) -> float:
    return max([float(await fn(*args)) for _ in range(rounds)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loop", description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--compute-ms", type=float, default=25.0)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs each")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    compute, latency = args.compute_ms / 1e3, args.latency_ms / 1e3
    shape = (args.steps, args.batch_size, compute, latency)

    async def measure() -> tuple[float, float]:
        sequential = await _best_of(sequential_loop, args.rounds, *shape)
        pipelined = await _best_of(recipe_loop, args.rounds, *shape)
        return sequential, pipelined

    load = os.getloadavg()[0]
    sequential, pipelined = anyio.run(measure, backend=args.backend)
    ideal = 1 / (2 * compute)
    table = Table(
        title=f"{args.steps} steps, C = {args.compute_ms:g} ms, L = {args.latency_ms:g} ms, "
        f"{args.backend}, best of {args.rounds} (load average {load:.1f})"
    )
    for column in ("loop", "steps/s", "vs sequential", "of ideal 1/(2C)"):
        table.add_column(column, justify="right" if column != "loop" else "left")
    rows: list[tuple[str, float]] = [
        ("sequential (await each call)", sequential),
        ("sl_basic recipe (pipelined)", pipelined),
        ("ideal 1/(2C)", ideal),
    ]
    for name, rate in rows:
        table.add_row(name, f"{rate:.2f}", f"{rate / sequential:.2f}x", f"{rate / ideal:.1%}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
