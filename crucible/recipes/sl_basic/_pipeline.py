"""The submit-ahead pipeline: collecting in-flight steps, and the operations that need the
current step's weights and so drain it first (checkpoints, evaluations).

Results are awaited without a timeout of their own: the training client times its operations
out (the session's ``op_timeout``) and recovers under the run's one restart policy.
"""

from __future__ import annotations

import math
import time

from crucible.recipes._eval import EvalResult
from crucible.recipes._render import RenderedBatch, render_batch
from crucible.recipes.sl_basic._reporting import elapsed_ns, log_completed, record_metrics
from crucible.recipes.sl_basic._state import SLContext
from crucible.telemetry import execute
from crucible.training import CheckpointKind, CheckpointManagerClient


def step_batch(ctx: SLContext, step: int) -> RenderedBatch:
    state, config = ctx.state, ctx.config
    assert state.plan is not None and state.splits is not None and state.renderer is not None
    conversations = state.plan.batch(state.splits.train, step)
    return render_batch(state.renderer, conversations, config.train_on, config.max_length)


async def collect(ctx: SLContext, *, keep_newest: bool) -> None:
    """Await the results of in-flight steps (all of them, or all but the newest)."""
    state = ctx.state
    while state.inflight and (len(state.inflight) > 1 or not keep_newest):
        entry = state.inflight[0]
        if entry.fb is not None and entry.fb_result is None:
            entry.fb_result = await entry.fb
        if entry.optim is not None and entry.optim_result is None:
            entry.optim_result = await entry.optim
        state.inflight.popleft()
        state.completed.append(entry)


async def drain(ctx: SLContext) -> None:
    """Finish every submitted step and record its metrics."""
    await collect(ctx, keep_newest=False)
    await log_completed(ctx)


async def save_checkpoint(
    ctx: SLContext, *, final: bool = False, kind: CheckpointKind = "state"
) -> str | None:
    """Drain, make the metrics durable, then checkpoint through the CheckpointManager.

    The order matters for resuming: once the checkpoints.jsonl line for step s exists, every
    metric record up to step s is already on disk. Returns the sampler path, if saved.
    """
    await drain(ctx)
    store = ctx.optional("metrics_store")
    if store is not None:
        await store.flush()
    manager: CheckpointManagerClient | None = ctx.optional("checkpoint_store")
    if manager is None:
        return None
    state = ctx.state
    metrics = {"train_loss": state.train_loss} if math.isfinite(state.train_loss) else {}
    if state.last_eval_step == state.step:  # only an evaluation of these very weights
        metrics.update({k.replace("/", "_"): v for k, v in state.last_eval.items()})
    # A step's weights are the same whenever it is saved (a stop right after a periodic
    # checkpoint, the final save of a resumed finished run): a re-save replaces its line.
    saved = await manager.save(
        step=state.step,
        metrics=metrics,
        kind=kind,
        final=final,
        epoch=state.epoch,
        overwrite=True,
    )
    state.last_completion = None
    execute(
        "crucible_train.checkpoint.saved",
        {"step": state.step},
        {
            "run_id": state.run_id,
            "name": saved.name,
            "checkpoint_path": saved.state_path or saved.sampler_path,
            "final": final,
        },
    )
    return saved.sampler_path


async def run_evaluation(ctx: SLContext, sampler_path: str | None = None) -> EvalResult:
    await drain(ctx)
    state = ctx.state
    evaluator = state.evaluator
    assert evaluator is not None, "build_dataset has not run"
    started = time.perf_counter()
    result = await evaluator.evaluate(ctx.adapter("training_client"), sampler_path)
    values = result.metrics()
    state.last_eval = values
    state.last_completion = None
    state.last_eval_step = state.step
    await record_metrics(ctx, state.step, values)
    execute(
        "crucible_train.evaluation.stop",
        {"nll": result.nll, "accuracy": result.accuracy, "duration": elapsed_ns(started)},
        {"run_id": state.run_id, "step": state.step, "examples": result.examples},
    )
    return result
