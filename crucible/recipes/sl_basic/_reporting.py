"""What sl_basic reports: metric records (into the store and the run's metric history),
telemetry of finished steps, and the metric part of the run summary."""

from __future__ import annotations

import math
import time
from typing import Any

from crucible.metrics import MetricRecord
from crucible.recipes.sl_basic._state import MetricHistory, SLContext
from crucible.telemetry import execute

TRAIN_LOSS, EVAL_NLL, EVAL_ACCURACY = "train/loss", "eval/nll", "eval/accuracy"
# Running totals, recorded at the steps that add to them (the last value is the run's total,
# across resumes too: the history is rebuilt from the stored records).
TRUNCATED, SKIPPED = "data/truncated_total", "data/skipped_total"
_TASK_ACCURACY = f"{EVAL_ACCURACY}/"


async def record_metrics(ctx: SLContext, step: int, values: dict[str, float]) -> None:
    """Record metrics at ``step`` into the metrics store (if any) and ``ctx.metrics``."""
    ctx.metrics.update(values)
    already = ctx.state.recorded_at_resume
    records = [
        MetricRecord(ctx.state.run_id, name, float(value), step)
        for name, value in values.items()
        if math.isfinite(value) and (name, step) not in already
    ]
    store = ctx.optional("metrics_store")
    if store is not None and records:
        await store.record_many(records)
    for record in records:
        ctx.state.history.add(record.metric, record.value, record.step)


async def log_completed(ctx: SLContext) -> None:
    """Record the metrics and telemetry of the steps whose results have been collected."""
    state = ctx.state
    for entry in state.completed:
        assert entry.fb_result is not None and entry.optim_result is not None
        now = time.perf_counter()
        began = state.last_completion if state.last_completion is not None else entry.submitted_at
        step_time = max(now - began, 1e-9)
        state.last_completion = now
        fb = entry.fb_result.metrics
        loss = fb["loss:sum"] / entry.trained_tokens if entry.trained_tokens else math.nan
        state.train_loss = loss
        grad_norm = (entry.optim_result.metrics or {}).get("grad_norm:mean", math.nan)
        values = {
            TRAIN_LOSS: loss,
            "train/lr": entry.lr,
            "train/tokens": float(entry.tokens),
            "train/trained_tokens": entry.trained_tokens,
            "train/tokens_per_s": entry.tokens / step_time,
            "train/step_time_s": step_time,
            "train/grad_norm": grad_norm,
            "train/epoch": float(entry.epoch),
        }
        for name, count in ((TRUNCATED, entry.truncated), (SKIPPED, entry.skipped)):
            if count:
                values[name] = (state.history.last(name) or 0.0) + count
        await record_metrics(ctx, entry.step, values)
        state.last_logged_step = entry.step
        execute(
            "crucible_train.batch.stop",
            {
                "loss": loss,
                "learning_rate": entry.lr,
                "tokens": entry.tokens,
                "tokens_per_s": entry.tokens / step_time,
                "gradient_norm": grad_norm,
                "duration": int(step_time * 1e9),
            },
            {
                "run_id": state.run_id,
                "epoch": entry.epoch,
                "batch": entry.batch,
                "step": entry.step,
                "total_steps": state.total_steps,
            },
        )
    state.completed.clear()


def elapsed_ns(started: float) -> int:
    return int((time.perf_counter() - started) * 1e9)


def summary_metrics(history: MetricHistory) -> dict[str, Any]:
    """The run summary's numbers: steps trained, first and last losses and accuracies."""
    return {
        "steps": history.max_step(TRAIN_LOSS) or 0,
        "train_loss_first": history.first(TRAIN_LOSS),
        "train_loss_last": history.last(TRAIN_LOSS),
        "eval_nll_first": history.first(EVAL_NLL),
        "eval_nll_last": history.last(EVAL_NLL),
        "eval_accuracy_first": history.first(EVAL_ACCURACY),
        "eval_accuracy_last": history.last(EVAL_ACCURACY),
        "conversations_truncated": int(history.last(TRUNCATED) or 0),
        "conversations_skipped": int(history.last(SKIPPED) or 0),
        "eval_accuracy_by_task": {
            name.removeprefix(_TASK_ACCURACY): history.last(name)
            for name in history.names()
            if name.startswith(_TASK_ACCURACY)
        },
    }
