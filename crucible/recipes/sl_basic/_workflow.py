"""sl_basic as a recipe: its stages in order, its two loops (epochs, batches) and its ports."""

from __future__ import annotations

from collections.abc import Iterable

from crucible.recipes._config import TrainConfig
from crucible.recipes._workflow import Loop, Recipe, Stage, Step
from crucible.recipes.sl_basic._stages import (
    AwaitForwardBackward,
    AwaitOptimStep,
    BuildDataset,
    Checkpoint,
    CheckpointOnStop,
    Cleanup,
    EndEpoch,
    Evaluate,
    EvaluateInitial,
    FinalEvaluate,
    ForwardBackward,
    InitSession,
    LoadDataset,
    LogStepMetrics,
    OptimStep,
    RegisterModel,
    SaveFinal,
)
from crucible.recipes.sl_basic._state import SLContext
from crucible.telemetry import execute

REQUIRED_PORTS = ("training_client", "dataset_store")
OPTIONAL_PORTS = (
    "metrics_store",
    "blob_store",
    "checkpoint_store",
    "model_registry",
    "evaluator",
)


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
