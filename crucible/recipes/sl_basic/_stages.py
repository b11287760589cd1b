"""The stages of sl_basic: plain classes with a ``name`` and ``async def run(ctx)`` (and
``due(ctx)`` for the every-N-steps ones), reusable in other workflows."""

from __future__ import annotations

import math
import time

from tinker import types

from crucible.recipes._batches import BatchPlan
from crucible.recipes._config import config_to_dict
from crucible.recipes._data import DatasetSplits
from crucible.recipes._eval import SamplingEvaluator
from crucible.recipes._render import ChatRenderer, datum_weight, template_for
from crucible.recipes._schedule import learning_rate
from crucible.recipes.sl_basic._pipeline import (
    collect,
    run_evaluation,
    save_checkpoint,
    step_batch,
)
from crucible.recipes.sl_basic._reporting import elapsed_ns, log_completed
from crucible.recipes.sl_basic._state import InFlight, SLContext
from crucible.telemetry import execute
from crucible.training import DuplicateConfig, ModelRecord, ModelRegistryClient, TrainingBackend

# ---- before the loop -----------------------------------------------------------------------


class LoadDataset:
    name = "load_dataset"

    async def run(self, ctx: SLContext) -> None:
        splits: DatasetSplits = await ctx.adapter("dataset_store").load()
        if not splits.train:
            raise ValueError("the dataset has no training conversations")
        ctx.state.splits = splits
        ctx.state.skipped_lines = splits.skipped_lines
        ctx.metrics["data/train_examples"] = float(len(splits.train))
        ctx.metrics["data/test_examples"] = float(len(splits.test))


class InitSession:
    """Attach to the training client: restore the resume point, or the weights to start from."""

    name = "init_session"

    async def run(self, ctx: SLContext) -> None:
        client: TrainingBackend = ctx.adapter("training_client")
        state = ctx.state
        tokenizer = client.tokenizer
        state.renderer = ChatRenderer(tokenizer, template_for(ctx.config.chat_template, tokenizer))
        manager = ctx.optional("checkpoint_store")
        point = await manager.resume_point() if manager is not None and state.resume else None
        if point is not None:
            await (await client.load_state(point.state_path, True))
            state.start_step = state.step = point.batch
            state.last_logged_step = point.batch
            state.resumed_from = point.name
        elif state.init_from is not None:
            await (await client.load_state(state.init_from, False))
        execute(
            "crucible_train.training.start",
            {"start_step": state.start_step},
            {"run_id": state.run_id, "recipe": "sl_basic", "resumed_from": state.resumed_from},
        )


class BuildDataset:
    """Plan the batches (seeded shuffle per epoch) and set up the evaluator."""

    name = "build_dataset"

    async def run(self, ctx: SLContext) -> None:
        config, state = ctx.config, ctx.state
        assert state.splits is not None and state.renderer is not None
        state.plan = BatchPlan(
            examples=len(state.splits.train),
            batch_size=config.batch_size,
            epochs=config.epochs,
            max_steps=config.max_steps,
            seed=config.seed,
        )
        injected = ctx.optional("evaluator")
        state.evaluator = injected or SamplingEvaluator(
            state.renderer,
            state.splits.test,
            train_on=config.train_on,
            max_length=config.max_length,
            examples=config.eval_examples,
            max_tokens=config.eval_max_tokens,
        )
        if state.start_step > state.plan.total_steps:
            raise ValueError(
                f"the checkpoint to resume from is at step {state.start_step}, past the "
                f"{state.plan.total_steps} steps this config plans"
            )


class EvaluateInitial:
    """The untrained model's numbers (step 0), for comparison."""

    name = "evaluate_initial"

    def due(self, ctx: SLContext) -> bool:
        return ctx.config.eval_at_start and ctx.state.start_step == 0

    async def run(self, ctx: SLContext) -> None:
        await run_evaluation(ctx)


# ---- each batch ----------------------------------------------------------------------------


class ForwardBackward:
    """Submit the current step's batch; the future goes into the state, nothing is awaited.

    Then it renders the next step's batch, while the backend works: rendering is then off the
    path between one step's result and the next step's submission.
    """

    name = "forward_backward"

    async def run(self, ctx: SLContext) -> None:
        state = ctx.state
        assert state.plan is not None
        prepared, state.prepared = state.prepared, None
        rendered = prepared[1] if prepared and prepared[0] == state.step else None
        if rendered is None:
            rendered = step_batch(ctx, state.step)
        data = rendered.data
        epoch, batch = state.plan.position(state.step)
        config = ctx.config
        lr = learning_rate(
            state.step - 1, state.total_steps, config.lr, config.lr_schedule, config.warmup_steps
        )
        entry = InFlight(
            step=state.step,
            epoch=epoch,
            batch=batch,
            lr=lr,
            tokens=sum(d.model_input.length for d in data),
            trained_tokens=sum(datum_weight(d) for d in data),
            truncated=rendered.truncated,
            skipped=rendered.skipped,
            submitted_at=time.perf_counter(),
        )
        client: TrainingBackend = ctx.adapter("training_client")
        entry.fb = await client.forward_backward(data, "cross_entropy")
        state.inflight.append(entry)
        if state.step < state.total_steps:
            state.prepared = (state.step + 1, step_batch(ctx, state.step + 1))


class AwaitForwardBackward:
    """Collect forward_backward results of the steps before the current one."""

    name = "await_fb"

    async def run(self, ctx: SLContext) -> None:
        for entry in list(ctx.state.inflight)[:-1]:
            if entry.fb is not None and entry.fb_result is None:
                entry.fb_result = await entry.fb


class OptimStep:
    """Submit the current step's Adam update with the scheduled learning rate."""

    name = "optim_step"

    async def run(self, ctx: SLContext) -> None:
        entry = ctx.state.inflight[-1]
        config = ctx.config
        adam = types.AdamParams(
            learning_rate=entry.lr,
            weight_decay=config.weight_decay,
            grad_clip_norm=config.grad_clip_norm,
        )
        client: TrainingBackend = ctx.adapter("training_client")
        entry.optim = await client.optim_step(adam)


class AwaitOptimStep:
    """Collect optim_step results of the steps before the current one."""

    name = "await_optim"

    async def run(self, ctx: SLContext) -> None:
        await collect(ctx, keep_newest=True)


class LogStepMetrics:
    """Record the finished steps' metrics (loss per token, lr, tokens, tokens/s, step time)."""

    name = "log_step_metrics"

    async def run(self, ctx: SLContext) -> None:
        await log_completed(ctx)


def _every(ctx: SLContext, every: int) -> bool:
    """Due every ``every`` steps (0: never) but not at the last step, which the final stages
    cover."""
    step = ctx.state.step
    return every > 0 and step % every == 0 and step < ctx.state.total_steps


class Checkpoint:
    """A state checkpoint every ``save_every`` steps (the final one is save_final's)."""

    name = "checkpoint"

    def due(self, ctx: SLContext) -> bool:
        return _every(ctx, ctx.config.save_every)

    async def run(self, ctx: SLContext) -> None:
        await save_checkpoint(ctx)


class Evaluate:
    """Held-out NLL and exact match every ``eval_every`` steps (the last is final_evaluate's)."""

    name = "evaluate"

    def due(self, ctx: SLContext) -> bool:
        return _every(ctx, ctx.config.eval_every)

    async def run(self, ctx: SLContext) -> None:
        await run_evaluation(ctx)


class EndEpoch:
    name = "end_epoch"

    async def run(self, ctx: SLContext) -> None:
        execute(
            "crucible_train.epoch.stop",
            {"loss": ctx.state.train_loss},
            {"run_id": ctx.state.run_id, "epoch": ctx.state.epoch, "step": ctx.state.step},
        )


# ---- after the loop ------------------------------------------------------------------------


class SaveFinal:
    """Drain, then save the final state and sampler weights (checkpoint ``final``)."""

    name = "save_final"

    async def run(self, ctx: SLContext) -> None:
        ctx.state.sampler_path = await save_checkpoint(ctx, final=True, kind="both")


class FinalEvaluate:
    """Evaluate the saved sampler weights (what a user of the registered model gets)."""

    name = "final_evaluate"

    async def run(self, ctx: SLContext) -> None:
        await run_evaluation(ctx, ctx.state.sampler_path)


class RegisterModel:
    """Register the final model with its config, metrics and lineage.

    The version is the run id. A run that registered before and is resumed finds its model
    again; a run continued past its end (``--resume`` with a larger ``max_steps``) registers
    ``<run id>@step<N>`` with the earlier version as its parent.
    """

    name = "register_model"

    async def run(self, ctx: SLContext) -> None:
        registry: ModelRegistryClient | None = ctx.optional("model_registry")
        state = ctx.state
        if registry is None or state.sampler_path is None:
            return
        parent, version = state.parent_model_id, state.run_id
        earlier = await _registered(registry, ctx.config.name, version)
        if earlier is not None and earlier.checkpoint_path == state.sampler_path:
            state.model_id = earlier.id  # registered before a crash; this is a resume
            return
        if earlier is not None:
            parent, version = earlier.id, f"{state.run_id}@step{state.step}"
        metrics = {k: v for k, v in ctx.metrics.items() if math.isfinite(v)}
        try:
            record = await registry.register(
                name=ctx.config.name,
                version=version,
                base_model=ctx.config.base_model,
                recipe="sl_basic",
                training_config=config_to_dict(ctx.config),
                checkpoint_path=state.sampler_path,
                metrics=metrics,
                tags=("sl_basic", f"run:{state.run_id}"),
                parent=parent,
            )
        except DuplicateConfig as duplicate:
            # The same config was registered by a run in another directory (log_dir is part
            # of the config, so only a copied run directory gets here): that model it is.
            record = duplicate.existing
        state.model_id = record.id


async def _registered(registry: ModelRegistryClient, name: str, version: str) -> ModelRecord | None:
    for record in await registry.list(name=name):
        if record.version == version:
            return record
    return None


class Cleanup:
    """Flush the metrics and say the run is over."""

    name = "cleanup"

    async def run(self, ctx: SLContext) -> None:
        store = ctx.optional("metrics_store")
        if store is not None:
            await store.flush()
        execute(
            "crucible_train.training.stop",
            {"steps": ctx.state.step, "duration": elapsed_ns(ctx.state.started_at)},
            {"run_id": ctx.state.run_id, "model_id": ctx.state.model_id},
        )


class CheckpointOnStop:
    """On Ctrl-C: finish the submitted steps and save a state checkpoint of them."""

    name = "checkpoint_on_stop"

    async def run(self, ctx: SLContext) -> None:
        if ctx.state.step > ctx.state.start_step or ctx.state.inflight:
            await save_checkpoint(ctx)
