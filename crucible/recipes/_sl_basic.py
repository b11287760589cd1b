"""``sl_basic``: supervised fine-tuning on conversations, as a workflow of reusable stages.

    load_dataset, init_session, build_dataset, evaluate_initial
    for each epoch:
        for each batch:
            forward_backward, await_fb, optim_step, await_optim, log_step_metrics,
            evaluate (every eval_every steps), checkpoint (every save_every steps)
        end_epoch
    save_final, final_evaluate, register_model, cleanup

Pipelining lives in the stages, as in tinker-cookbook's submit-ahead loop: ``forward_backward``
and ``optim_step`` only submit and leave their futures in the state; ``await_fb`` and
``await_optim`` collect the *previous* step's results. So when the loop waits for step s-1,
step s's work is already queued at the backend and the backend never idles for a round trip.
Stages that need the weights of the current step (checkpoint, evaluate, save_final) first
drain the pipeline, so a checkpoint at step s is only written once every metric up to s is
durable: a resumed run drops the records after s and repeats nothing.

Adapters (ports): ``training_client`` (a TrainingBackend) and ``dataset_store`` are required;
``metrics_store``, ``checkpoint_store`` (a CheckpointManagerClient), ``model_registry`` (a
ModelRegistryClient), ``evaluator`` and ``blob_store`` are optional.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Iterable
from typing import TypeVar

import anyio
import attrs
from tinker import types

from crucible.config import TrainConfig, config_to_dict
from crucible.metrics import MetricRecord
from crucible.recipes._batches import BatchPlan
from crucible.recipes._data import DatasetSplits
from crucible.recipes._eval import EvalResult, Evaluator, SamplingEvaluator
from crucible.recipes._render import ChatRenderer, datum_weight, template_for
from crucible.recipes._schedule import learning_rate
from crucible.recipes._workflow import Context, Loop, Recipe, Stage, Step
from crucible.telemetry import execute
from crucible.training import (
    CheckpointKind,
    CheckpointManagerClient,
    DuplicateConfig,
    ModelRecord,
    ModelRegistryClient,
    TrainingBackend,
)

T = TypeVar("T")

REQUIRED_PORTS = ("training_client", "dataset_store")
OPTIONAL_PORTS = (
    "metrics_store",
    "blob_store",
    "checkpoint_store",
    "model_registry",
    "evaluator",
)


@attrs.define
class InFlight:
    """One submitted training step and what is known about it so far."""

    step: int
    epoch: int
    batch: int
    lr: float
    tokens: int
    trained_tokens: float
    submitted_at: float
    fb: Awaitable[types.ForwardBackwardOutput] | None = None
    optim: Awaitable[types.OptimStepResponse] | None = None
    fb_result: types.ForwardBackwardOutput | None = None
    optim_result: types.OptimStepResponse | None = None


@attrs.define
class SLState:
    """The run state the stages share (the ``ctx.state`` of sl_basic)."""

    run_id: str
    resume: bool = False  # continue from the checkpoint store's resume point
    init_from: str | None = None  # a state path to start from (weights only)
    parent_model_id: int | None = None
    splits: DatasetSplits | None = None
    renderer: ChatRenderer | None = None
    plan: BatchPlan | None = None
    evaluator: Evaluator | None = None
    start_step: int = 0
    step: int = 0  # the step most recently submitted (1-based); 0 before the first
    epoch: int = 0
    inflight: deque[InFlight] = attrs.field(factory=deque)
    prepared: tuple[int, list[types.Datum]] | None = None  # the next step's rendered batch
    completed: list[InFlight] = attrs.field(factory=list)
    last_logged_step: int = 0
    # when the last step's results were seen; None after a pause (evaluation, checkpoint), so
    # the next step's time is counted from its own submission
    last_completion: float | None = None
    started_at: float = attrs.field(factory=time.perf_counter)
    first_eval: dict[str, float] = attrs.field(factory=dict)
    last_eval: dict[str, float] = attrs.field(factory=dict)
    last_eval_step: int = -1
    train_loss: float = math.nan
    sampler_path: str | None = None
    model_id: int | None = None
    resumed_from: str | None = None
    skipped_lines: int = 0
    # (metric, step) pairs already on disk at the resume step: not recorded again
    recorded_at_resume: frozenset[tuple[str, int]] = frozenset()

    @property
    def total_steps(self) -> int:
        assert self.plan is not None, "build_dataset has not run"
        return self.plan.total_steps


SLContext = Context[TrainConfig, SLState]


# ---- helpers shared by stages ------------------------------------------------------------


async def _wait(ctx: SLContext, future: Awaitable[T]) -> T:
    """Wait for a backend result, giving up after ``op_timeout_s`` (a wedged backend)."""
    with anyio.fail_after(ctx.config.op_timeout_s):
        return await future


async def collect(ctx: SLContext, *, keep_newest: bool) -> None:
    """Await the results of in-flight steps (all of them, or all but the newest)."""
    state = ctx.state
    while state.inflight and (len(state.inflight) > 1 or not keep_newest):
        entry = state.inflight[0]
        if entry.fb is not None and entry.fb_result is None:
            entry.fb_result = await _wait(ctx, entry.fb)
        if entry.optim is not None and entry.optim_result is None:
            entry.optim_result = await _wait(ctx, entry.optim)
        state.inflight.popleft()
        state.completed.append(entry)


async def record_metrics(ctx: SLContext, step: int, values: dict[str, float]) -> None:
    """Record metrics at ``step`` into the metrics store (if any) and ``ctx.metrics``."""
    ctx.metrics.update(values)
    store = ctx.optional("metrics_store")
    if store is None:
        return
    already = ctx.state.recorded_at_resume
    records = [
        MetricRecord(ctx.state.run_id, name, float(value), step)
        for name, value in values.items()
        if math.isfinite(value) and (name, step) not in already
    ]
    if records:
        await store.record_many(records)


async def log_completed(ctx: SLContext) -> None:
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
            "train/loss": loss,
            "train/lr": entry.lr,
            "train/tokens": float(entry.tokens),
            "train/trained_tokens": entry.trained_tokens,
            "train/tokens_per_s": entry.tokens / step_time,
            "train/step_time_s": step_time,
            "train/grad_norm": grad_norm,
            "train/epoch": float(entry.epoch),
        }
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
    saved = await manager.save(
        step=state.step, metrics=metrics, kind=kind, final=final, epoch=state.epoch
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
    evaluator = ctx.state.evaluator
    assert evaluator is not None, "build_dataset has not run"
    started = time.perf_counter()
    result = await evaluator.evaluate(ctx.adapter("training_client"), sampler_path)
    values = result.metrics()
    ctx.state.last_eval = values
    ctx.state.last_completion = None
    ctx.state.last_eval_step = ctx.state.step
    if not ctx.state.first_eval:
        ctx.state.first_eval = values
    await record_metrics(ctx, ctx.state.step, values)
    execute(
        "crucible_train.evaluation.stop",
        {"nll": result.nll, "accuracy": result.accuracy, "duration": _ns(started)},
        {"run_id": ctx.state.run_id, "step": ctx.state.step, "examples": result.examples},
    )
    return result


def _ns(started: float) -> int:
    return int((time.perf_counter() - started) * 1e9)


# ---- the stages --------------------------------------------------------------------------


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
            await _wait(ctx, await client.load_state(point.state_path, True))
            state.start_step = state.step = point.batch
            state.last_logged_step = point.batch
            state.resumed_from = point.name
        elif state.init_from is not None:
            await _wait(ctx, await client.load_state(state.init_from, False))
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


def _render_batch(ctx: SLContext, step: int) -> list[types.Datum]:
    state, config = ctx.state, ctx.config
    assert state.plan is not None and state.splits is not None and state.renderer is not None
    conversations = state.plan.batch(state.splits.train, step)
    return [state.renderer.datum(c, config.train_on, config.max_length) for c in conversations]


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
        data = prepared[1] if prepared and prepared[0] == state.step else None
        if data is None:
            data = _render_batch(ctx, state.step)
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
            submitted_at=time.perf_counter(),
        )
        client: TrainingBackend = ctx.adapter("training_client")
        entry.fb = await client.forward_backward(data, "cross_entropy")
        state.inflight.append(entry)
        if state.step < state.total_steps:
            state.prepared = (state.step + 1, _render_batch(ctx, state.step + 1))


class AwaitForwardBackward:
    """Collect forward_backward results of the steps before the current one."""

    name = "await_fb"

    async def run(self, ctx: SLContext) -> None:
        for entry in list(ctx.state.inflight)[:-1]:
            if entry.fb is not None and entry.fb_result is None:
                entry.fb_result = await _wait(ctx, entry.fb)


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


class Checkpoint:
    """A state checkpoint every ``save_every`` steps (the final one is save_final's)."""

    name = "checkpoint"

    def due(self, ctx: SLContext) -> bool:
        every, step = ctx.config.save_every, ctx.state.step
        return every > 0 and step % every == 0 and step < ctx.state.total_steps

    async def run(self, ctx: SLContext) -> None:
        await save_checkpoint(ctx)


class Evaluate:
    """Held-out NLL and exact match every ``eval_every`` steps (the last is final_evaluate's)."""

    name = "evaluate"

    def due(self, ctx: SLContext) -> bool:
        every, step = ctx.config.eval_every, ctx.state.step
        return every > 0 and step % every == 0 and step < ctx.state.total_steps

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
            {"steps": ctx.state.step, "duration": _ns(ctx.state.started_at)},
            {"run_id": ctx.state.run_id, "model_id": ctx.state.model_id},
        )


class CheckpointOnStop:
    """On Ctrl-C: finish the submitted steps and save a state checkpoint of them."""

    name = "checkpoint_on_stop"

    async def run(self, ctx: SLContext) -> None:
        if ctx.state.step > ctx.state.start_step or ctx.state.inflight:
            await save_checkpoint(ctx)


# ---- the workflow ------------------------------------------------------------------------


def _epochs(ctx: SLContext) -> Iterable[int]:
    plan = ctx.state.plan
    assert plan is not None
    last_epoch = plan.position(plan.total_steps)[0]
    first_epoch = plan.position(ctx.state.start_step + 1)[0]
    return range(first_epoch, last_epoch + 1)


def _enter_epoch(ctx: SLContext, epoch: int) -> None:
    ctx.state.epoch = epoch
    execute("crucible_train.epoch.start", {}, {"run_id": ctx.state.run_id, "epoch": epoch})


def _steps(ctx: SLContext) -> Iterable[int]:
    plan = ctx.state.plan
    assert plan is not None
    first = ctx.state.epoch * plan.batches_per_epoch + 1
    last = min((ctx.state.epoch + 1) * plan.batches_per_epoch, plan.total_steps)
    return range(max(first, ctx.state.start_step + 1), last + 1)


def _enter_step(ctx: SLContext, step: int) -> None:
    ctx.state.step = step


def sl_basic_workflow() -> list[Step]:
    batch_stages: tuple[Stage, ...] = (
        ForwardBackward(),
        AwaitForwardBackward(),
        OptimStep(),
        AwaitOptimStep(),
        LogStepMetrics(),
        Evaluate(),  # before checkpoint: the checkpoint then carries (and follows) the eval
        Checkpoint(),
    )
    return [
        LoadDataset(),
        InitSession(),
        BuildDataset(),
        EvaluateInitial(),
        Loop(
            "epochs",
            _epochs,
            _enter_epoch,
            (Loop("batches", _steps, _enter_step, batch_stages),),
            after=(EndEpoch(),),
        ),
        SaveFinal(),
        FinalEvaluate(),
        RegisterModel(),
        Cleanup(),
    ]


SL_BASIC = Recipe(
    name="sl_basic",
    default_config=TrainConfig,
    required=REQUIRED_PORTS,
    optional=OPTIONAL_PORTS,
    workflow=sl_basic_workflow,
    on_stop=lambda: [CheckpointOnStop()],
)
