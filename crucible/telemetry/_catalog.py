"""The catalog of standard events: what each name means and which category it belongs to.

The catalog documents names; emitting an event that is not in it is allowed (the bus takes any
dotted name). Handlers and experiments use the catalog to subscribe by category.
"""

from __future__ import annotations

from types import MappingProxyType

import msgspec

__all__ = ["EventInfo", "event_info", "events_by_category", "standard_events"]


class EventInfo(msgspec.Struct, frozen=True):
    """What a standard event is: its category and a one-line description."""

    category: str
    description: str


_CATALOG: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "llm",
        (
            ("req_llm.request.start", "An LLM request was sent."),
            ("req_llm.request.stop", "An LLM request completed (duration, tokens, response)."),
            ("req_llm.request.exception", "An LLM request failed (kind, reason)."),
        ),
    ),
    (
        "ensemble",
        (
            ("ensemble.prediction.start", "An ensemble prediction started."),
            ("ensemble.prediction.stop", "An ensemble prediction completed."),
            ("ensemble.vote.completed", "The ensemble's members' votes were combined."),
        ),
    ),
    (
        "hedging",
        (
            ("hedging.request.start", "A hedged request started."),
            ("hedging.request.duplicated", "A hedged request sent a backup copy."),
            ("hedging.request.stop", "A hedged request completed (first answer won)."),
        ),
    ),
    (
        "training",
        (
            ("crucible_train.training.start", "A training run started."),
            ("crucible_train.training.stop", "A training run finished."),
            ("crucible_train.epoch.start", "A training epoch started."),
            ("crucible_train.epoch.stop", "A training epoch finished (epoch metrics)."),
            ("crucible_train.batch.stop", "A training step finished (loss, learning rate, ...)."),
            ("crucible_train.checkpoint.saved", "The trainer saved a checkpoint."),
        ),
    ),
    (
        "deployment",
        (
            ("crucible_deployment.inference.start", "An inference request to a served model."),
            ("crucible_deployment.inference.stop", "An inference request completed."),
            ("crucible_deployment.inference.exception", "An inference request failed."),
        ),
    ),
    (
        "framework",
        (
            ("crucible_framework.pipeline.start", "A recipe pipeline started."),
            ("crucible_framework.pipeline.stop", "A recipe pipeline finished."),
            ("crucible_framework.stage.start", "A pipeline stage started."),
            ("crucible_framework.stage.stop", "A pipeline stage finished."),
        ),
    ),
    (
        "trace",
        (("causal_trace.event.created", "A causal-trace event was recorded."),),
    ),
    (
        "tools",
        (
            ("altar.tool.start", "A tool call started."),
            ("altar.tool.stop", "A tool call finished."),
        ),
    ),
    (
        # Emitted by crucible.recipes: the workflow runner's spans and the recipe's own steps.
        "recipes",
        (
            ("crucible_kitchen.workflow.run.start", "A recipe's workflow started."),
            ("crucible_kitchen.workflow.run.stop", "A recipe's workflow finished (duration)."),
            ("crucible_kitchen.workflow.run.exception", "A recipe's workflow failed."),
            ("crucible_kitchen.stage.run.start", "A workflow stage started (stage name)."),
            ("crucible_kitchen.stage.run.stop", "A workflow stage finished (duration)."),
            ("crucible_kitchen.stage.run.exception", "A workflow stage failed (kind, reason)."),
            ("crucible_train.evaluation.stop", "An evaluation finished (NLL, exact match)."),
        ),
    ),
    (
        # The runtime's own events, emitted by the layers that own them (crucible.actors,
        # crucible.training); defined here so every consumer shares one vocabulary.
        "crucible",
        (
            ("crucible.actor.crashed", "An actor's handler raised; the actor died (reason)."),
            ("crucible.actor.restarted", "A supervisor restarted a child (child id, attempt)."),
            (
                "crucible.actor.escalated",
                "A supervisor exceeded its restart intensity and gave up (reason).",
            ),
            ("crucible.session.status", "A training session changed status (from, to)."),
            (
                "crucible.session.retry",
                "A failed backend operation is sent again in place with its request id.",
            ),
            ("crucible.checkpoint.saved", "The CheckpointManager saved a checkpoint (name)."),
            ("crucible.checkpoint.retry", "A checkpoint backend call failed and is retried."),
            ("crucible.checkpoint.pruned", "The CheckpointManager pruned checkpoints (removed)."),
            ("crucible.registry.registered", "The ModelRegistry registered a model version."),
            ("crucible.registry.promoted", "A model version moved to another stage."),
        ),
    ),
)

_INFO: MappingProxyType[str, EventInfo] = MappingProxyType(
    {
        name: EventInfo(category, description)
        for category, events in _CATALOG
        for name, description in events
    }
)


def events_by_category() -> dict[str, list[str]]:
    """Every standard event name, grouped by category (a fresh dict, safe to change)."""
    return {category: [name for name, _ in events] for category, events in _CATALOG}


def event_info(name: str) -> EventInfo | None:
    """The category and description of a standard event; None if the name is not standard."""
    return _INFO.get(name)


def standard_events() -> tuple[str, ...]:
    """Every standard event name, in catalog order."""
    return tuple(_INFO)
