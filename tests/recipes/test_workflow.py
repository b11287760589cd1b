"""The workflow runner: order, loops, due stages, spans, stage errors, dry runs, stops."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import pytest

from crucible.recipes import (
    Context,
    FunctionStage,
    Loop,
    MissingAdapters,
    Recipe,
    StageFailed,
    StopRequested,
    run_workflow,
)
from crucible.recipes.sl_basic import SL_BASIC
from crucible.telemetry import attach, detach

pytestmark = pytest.mark.anyio


@attrs.define
class State:
    step: int = 0
    log: list[str] = attrs.field(factory=list)


def _stage(name: str, when: Any = None) -> FunctionStage:
    async def run(ctx: Context[Any, State]) -> None:
        ctx.state.log.append(f"{name}@{ctx.state.step}")

    return FunctionStage(name, run, when)


def _enter(ctx: Context[Any, State], step: int) -> None:
    ctx.state.step = step


def _recipe(*body: Any, on_stop: tuple[Any, ...] = ()) -> Recipe:
    return Recipe(
        name="toy",
        default_config=dict,
        required=("training_client",),
        optional=("metrics_store",),
        workflow=lambda: list(body),
        on_stop=lambda: list(on_stop),
    )


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []

    def handler(name: str, _m: Mapping[str, Any], metadata: Mapping[str, Any], _c: Any) -> None:
        seen.append((name, dict(metadata)))

    attach("test.workflow", "crucible_kitchen.*", handler)
    yield seen
    detach("test.workflow")


def _ctx() -> Context[Any, State]:
    return Context({}, {"training_client": object()}, State())


async def test_stages_run_in_order_with_loops_and_due_checks(
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    recipe = _recipe(
        _stage("setup"),
        Loop(
            "steps",
            lambda ctx: range(1, 5),
            _enter,
            (_stage("train"), _stage("save", when=lambda ctx: ctx.state.step % 2 == 0)),
        ),
        _stage("final"),
    )
    ctx = await run_workflow(recipe, _ctx())
    assert ctx.state.log == [
        "setup@0",
        "train@1",
        "train@2",
        "save@2",
        "train@3",
        "train@4",
        "save@4",
        "final@4",
    ]
    names = [name for name, _ in events]
    assert names[0] == "crucible_kitchen.workflow.run.start"
    assert names[-1] == "crucible_kitchen.workflow.run.stop"
    stages = [meta["stage"] for name, meta in events if name.endswith("stage.run.stop")]
    assert stages == [entry.split("@")[0] for entry in ctx.state.log]
    assert recipe.stage_names() == ["setup", "train", "save", "final"]


async def test_a_failing_stage_is_named_and_its_error_chained(
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    async def explode(ctx: Context[Any, State]) -> None:
        raise KeyError("no such batch")

    recipe = _recipe(_stage("setup"), FunctionStage("forward_backward", explode), _stage("never"))
    ctx = _ctx()
    with pytest.raises(StageFailed) as caught:
        await run_workflow(recipe, ctx)
    assert caught.value.stage == "forward_backward"
    assert "stage 'forward_backward' failed: KeyError" in str(caught.value)
    assert isinstance(caught.value.__cause__, KeyError)
    assert ctx.state.log == ["setup@0"]
    exceptions = [meta for name, meta in events if name.endswith(".exception")]
    assert [meta.get("stage") for meta in exceptions] == ["forward_backward", None]
    assert exceptions[0]["kind"] == "KeyError"


async def test_dry_run_checks_adapters_and_runs_nothing() -> None:
    recipe = _recipe(_stage("setup"))
    ctx = _ctx()
    assert (await run_workflow(recipe, ctx, dry_run=True)).state.log == []
    with pytest.raises(MissingAdapters) as caught:
        await run_workflow(
            SL_BASIC, Context({}, {"metrics_store": object()}, State()), dry_run=True
        )
    assert caught.value.missing == ("training_client", "dataset_store")
    assert "training_client, dataset_store" in str(caught.value)


async def test_a_stop_request_ends_loops_and_runs_the_stop_stages() -> None:
    async def request_stop(ctx: Context[Any, State]) -> None:
        ctx.state.log.append(f"train@{ctx.state.step}")
        if ctx.state.step == 2:
            ctx.stop_requested = True

    recipe = _recipe(
        Loop("steps", lambda ctx: range(1, 10), _enter, (FunctionStage("train", request_stop),)),
        _stage("final"),
        on_stop=(_stage("save_on_stop"),),
    )
    ctx = _ctx()
    with pytest.raises(StopRequested) as caught:
        await run_workflow(recipe, ctx)
    assert caught.value.step == 2
    assert ctx.state.log == ["train@1", "train@2", "save_on_stop@2"]


def test_sl_basic_declares_its_ports_and_stages() -> None:
    assert SL_BASIC.required == ("training_client", "dataset_store")
    assert set(SL_BASIC.optional) == {
        "metrics_store",
        "blob_store",
        "checkpoint_store",
        "model_registry",
        "evaluator",
    }
    assert SL_BASIC.stage_names() == [
        "load_dataset",
        "init_session",
        "build_dataset",
        "evaluate_initial",
        "forward_backward",
        "await_fb",
        "optim_step",
        "await_optim",
        "log_step_metrics",
        "evaluate",
        "checkpoint",
        "end_epoch",
        "save_final",
        "final_evaluate",
        "register_model",
        "cleanup",
    ]


def test_the_custom_stage_example_in_docs_recipes_md_builds_a_recipe() -> None:
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
    code = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)[-1]
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/recipes.md", "exec"), namespace)
    names = namespace["MY_RECIPE"].stage_names()
    assert names[names.index("checkpoint") + 1] == "grad_norm_alarm"
    assert SL_BASIC.stage_names() == [n for n in names if n != "grad_norm_alarm"]
