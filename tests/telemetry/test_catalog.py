from crucible import telemetry

EXPECTED = {
    "llm": ["req_llm.request.start", "req_llm.request.stop", "req_llm.request.exception"],
    "ensemble": [
        "ensemble.prediction.start",
        "ensemble.prediction.stop",
        "ensemble.vote.completed",
    ],
    "hedging": [
        "hedging.request.start",
        "hedging.request.duplicated",
        "hedging.request.stop",
    ],
    "training": [
        "crucible_train.training.start",
        "crucible_train.training.stop",
        "crucible_train.epoch.start",
        "crucible_train.epoch.stop",
        "crucible_train.batch.stop",
        "crucible_train.checkpoint.saved",
    ],
    "deployment": [
        "crucible_deployment.inference.start",
        "crucible_deployment.inference.stop",
        "crucible_deployment.inference.exception",
    ],
    "framework": [
        "crucible_framework.pipeline.start",
        "crucible_framework.pipeline.stop",
        "crucible_framework.stage.start",
        "crucible_framework.stage.stop",
    ],
    "trace": ["causal_trace.event.created"],
    "tools": ["altar.tool.start", "altar.tool.stop"],
}


def test_the_25_standard_events_by_category() -> None:
    by_category = telemetry.events_by_category()
    for category, names in EXPECTED.items():
        assert by_category[category] == names
    assert sum(len(names) for names in EXPECTED.values()) == 25


def test_the_crucible_category_holds_the_runtime_events() -> None:
    crucible = telemetry.events_by_category()["crucible"]
    assert {
        "crucible.actor.crashed",
        "crucible.actor.restarted",
        "crucible.actor.escalated",
        "crucible.session.status",
        "crucible.session.retry",
        "crucible.checkpoint.saved",
        "crucible.checkpoint.retry",
        "crucible.checkpoint.pruned",
        "crucible.registry.registered",
        "crucible.registry.promoted",
    } == set(crucible)


def test_event_info() -> None:
    info = telemetry.event_info("crucible_train.batch.stop")
    assert info is not None
    assert info.category == "training"
    assert info.description
    assert telemetry.event_info("no.such.event") is None


def test_every_name_is_unique_and_listed_once() -> None:
    names = telemetry.standard_events()
    assert len(names) == len(set(names)) == 42
    for category, members in telemetry.events_by_category().items():
        for name in members:
            info = telemetry.event_info(name)
            assert info is not None
            assert info.category == category


def test_events_by_category_is_a_fresh_copy() -> None:
    telemetry.events_by_category()["llm"].append("x.y")
    assert "x.y" not in telemetry.events_by_category()["llm"]
