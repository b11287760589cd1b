"""A small workflow runner: a recipe is an ordered list of stages, with loops.

A ``Stage`` is a plain object with a ``name`` and ``async def run(ctx)``; ``due(ctx)`` (optional)
says whether it runs this time round (for "every N steps" stages). A ``Loop`` repeats its body
once per item its ``items(ctx)`` yields, after ``enter(ctx, item)`` has put the item into the
context. The runner wraps each stage in a telemetry span (``crucible_kitchen.stage.run``) and
the whole run in ``crucible_kitchen.workflow.run``; a failing stage raises ``StageFailed``
naming the stage, with the original error as its cause. That is the whole DSL: recipes that
need more write a stage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import attrs

from crucible.telemetry import span

C = TypeVar("C")  # the recipe's config
S = TypeVar("S")  # the recipe's mutable run state


class WorkflowError(Exception):
    """Base class of the runner's errors."""


class StageFailed(WorkflowError):
    """A stage raised; ``stage`` is its name and ``__cause__`` the error."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"stage {stage!r} failed: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


class MissingAdapters(WorkflowError):
    """Required adapters were not given (``dry_run`` names them all at once)."""

    def __init__(self, recipe: str, missing: Sequence[str]) -> None:
        super().__init__(
            f"recipe {recipe!r} needs adapters that were not given: {', '.join(missing)}"
        )
        self.missing = tuple(missing)


class StopRequested(WorkflowError):
    """The run was asked to stop (Ctrl-C); the workflow's ``on_stop`` stages have run."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step} on request")
        self.step = step


@attrs.define
class Context(Generic[C, S]):
    """What stages share: the config, the injected adapters, the run state, the latest metrics.

    ``stop_requested`` is set from outside (a signal handler) and checked by loops between
    iterations.
    """

    config: C
    adapters: dict[str, Any]
    state: S
    metrics: dict[str, float] = attrs.field(factory=dict)
    stop_requested: bool = False

    def adapter(self, port: str) -> Any:
        try:
            return self.adapters[port]
        except KeyError:
            raise MissingAdapters("(running)", [port]) from None

    def optional(self, port: str) -> Any:
        return self.adapters.get(port)


@runtime_checkable
class Stage(Protocol):
    name: str

    async def run(self, ctx: Context[Any, Any]) -> None: ...


def is_due(stage: Stage, ctx: Context[Any, Any]) -> bool:
    due: Callable[[Context[Any, Any]], bool] | None = getattr(stage, "due", None)
    return True if due is None else due(ctx)


@attrs.frozen
class Loop:
    """Run ``body`` once per item of ``items(ctx)``, calling ``enter(ctx, item)`` first.

    Loops check ``ctx.stop_requested`` before each iteration.
    """

    name: str
    items: Callable[[Context[Any, Any]], Iterable[Any]]
    enter: Callable[[Context[Any, Any], Any], None]
    body: tuple[Stage | Loop, ...]
    after: tuple[Stage, ...] = ()  # run after each iteration's body (e.g. end-of-epoch stages)


Step = Stage | Loop


@attrs.frozen
class Recipe:
    """A named workflow with its default config and the adapter ports it needs."""

    name: str
    default_config: Callable[[], Any]
    required: tuple[str, ...]
    optional: tuple[str, ...]
    workflow: Callable[[], Sequence[Step]]  # fresh stage objects per run
    on_stop: Callable[[], Sequence[Stage]] = tuple  # run when a stop was requested
    validate_config: Callable[[Any], None] = lambda _config: None

    def stage_names(self) -> list[str]:
        names: list[str] = []

        def walk(steps: Iterable[Step]) -> None:
            for step in steps:
                if isinstance(step, Loop):
                    walk(step.body)
                    walk(step.after)
                else:
                    names.append(step.name)

        walk(self.workflow())
        return names


def check_adapters(recipe: Recipe, adapters: Mapping[str, Any]) -> None:
    missing = [port for port in recipe.required if adapters.get(port) is None]
    if missing:
        raise MissingAdapters(recipe.name, missing)


async def run_workflow(
    recipe: Recipe,
    ctx: Context[Any, Any],
    *,
    dry_run: bool = False,
) -> Context[Any, Any]:
    """Run ``recipe`` over ``ctx``; with ``dry_run`` only check the config and adapters.

    Raises ``MissingAdapters``, ``StageFailed`` (the stage's name, its error chained) or
    ``StopRequested`` (after the recipe's ``on_stop`` stages ran).
    """
    recipe.validate_config(ctx.config)
    check_adapters(recipe, ctx.adapters)
    if dry_run:
        return ctx
    with span("crucible_kitchen.workflow.run", {"recipe": recipe.name}):
        try:
            await _run_steps(recipe.workflow(), ctx)
        except _Stop:
            for stage in recipe.on_stop():
                await _run_stage(stage, ctx)
            raise StopRequested(int(getattr(ctx.state, "step", 0))) from None
    return ctx


class _Stop(Exception):
    pass


async def _run_steps(steps: Iterable[Step], ctx: Context[Any, Any]) -> None:
    for step in steps:
        if isinstance(step, Loop):
            for item in step.items(ctx):
                if ctx.stop_requested:
                    raise _Stop
                step.enter(ctx, item)
                await _run_steps(step.body, ctx)
                await _run_steps(step.after, ctx)
        elif is_due(step, ctx):
            await _run_stage(step, ctx)


async def _run_stage(stage: Stage, ctx: Context[Any, Any]) -> None:
    metadata = {"stage": stage.name, "step": getattr(ctx.state, "step", None)}
    try:
        with span("crucible_kitchen.stage.run", metadata):
            await stage.run(ctx)
    except (StageFailed, _Stop):
        raise
    except Exception as error:
        raise StageFailed(stage.name, error) from error


@attrs.frozen
class FunctionStage:
    """A stage from a plain async function (for small user stages and tests)."""

    name: str
    fn: Callable[[Context[Any, Any]], Awaitable[None]]
    when: Callable[[Context[Any, Any]], bool] | None = None

    async def run(self, ctx: Context[Any, Any]) -> None:
        await self.fn(ctx)

    def due(self, ctx: Context[Any, Any]) -> bool:
        return True if self.when is None else self.when(ctx)
