import logging
from collections.abc import Mapping
from typing import Any

import pytest

from crucible import telemetry

Seen = list[tuple[str, dict[str, Any], dict[str, Any], Any]]


def recorder(seen: Seen) -> telemetry.HandlerFn:
    def record(
        name: str, measurements: Mapping[str, Any], metadata: Mapping[str, Any], config: Any
    ) -> None:
        seen.append((name, dict(measurements), dict(metadata), config))

    return record


def test_execute_reaches_a_handler_with_its_config() -> None:
    seen: Seen = []
    telemetry.attach("t1", ["a.b.c"], recorder(seen), config={"k": 1})
    telemetry.execute("a.b.c", {"x": 1}, {"m": "v"})
    telemetry.execute("a.b.other", {"x": 2}, {})
    assert seen == [("a.b.c", {"x": 1}, {"m": "v"}, {"k": 1})]


def test_execute_without_payload_passes_empty_mappings() -> None:
    seen: Seen = []
    telemetry.attach("t1", "x.y", recorder(seen))
    telemetry.execute("x.y")
    assert seen == [("x.y", {}, {}, None)]


def test_prefix_and_star_patterns() -> None:
    prefixed: Seen = []
    everything: Seen = []
    telemetry.attach("pre", "crucible_train.*", recorder(prefixed))
    telemetry.attach("all", "*", recorder(everything))
    telemetry.execute("crucible_train.batch.stop")
    telemetry.execute("crucible_trainer.batch.stop")  # a different root, not under the prefix
    telemetry.execute("other.event")
    assert [s[0] for s in prefixed] == ["crucible_train.batch.stop"]
    assert [s[0] for s in everything] == [
        "crucible_train.batch.stop",
        "crucible_trainer.batch.stop",
        "other.event",
    ]


def test_attach_many_and_detach() -> None:
    seen: Seen = []
    telemetry.attach_many("many", ["a.start", "a.stop"], recorder(seen))
    telemetry.execute("a.start")
    telemetry.execute("a.stop")
    assert telemetry.detach("many") is True
    assert telemetry.detach("many") is False
    telemetry.execute("a.start")
    assert [s[0] for s in seen] == ["a.start", "a.stop"]


def test_handlers_run_in_attach_order() -> None:
    order: list[str] = []
    for handler_id in ("first", "second", "third"):
        telemetry.attach(handler_id, "e.v", lambda *_args, _id=handler_id: order.append(_id))
    telemetry.execute("e.v")
    assert order == ["first", "second", "third"]


def test_duplicate_handler_id_is_an_error_and_keeps_the_first() -> None:
    seen: Seen = []
    telemetry.attach("dup", "e.v", recorder(seen))
    with pytest.raises(telemetry.DuplicateHandler, match="dup"):
        telemetry.attach("dup", "e.w", recorder(seen))
    telemetry.execute("e.v")
    telemetry.execute("e.w")
    assert [s[0] for s in seen] == ["e.v"]


@pytest.mark.parametrize("bad", ["", ".a", "a.", 3])
def test_bad_event_names_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="event names"):
        telemetry.attach("bad", [bad], recorder([]))
    assert not telemetry.list_handlers("anything")


def test_no_events_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one event"):
        telemetry.attach("none", [], recorder([]))


def test_a_raising_handler_is_detached_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def broken(*_args: Any) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    seen: Seen = []
    telemetry.attach("broken", "e.v", broken)
    telemetry.attach("healthy", "e.v", recorder(seen))
    with caplog.at_level(logging.ERROR, logger="crucible.telemetry"):
        telemetry.execute("e.v")  # the emitter sees no error
        telemetry.execute("e.v")
    assert calls == 1
    assert len(seen) == 2  # the healthy handler after it still ran, both times
    assert [h.handler_id for h in telemetry.list_handlers("e.v")] == ["healthy"]
    records = [r for r in caplog.records if "broken" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info is not None


def test_list_handlers_filters_by_event() -> None:
    telemetry.attach("h1", "a.*", recorder([]))
    telemetry.attach("h2", "b.c", recorder([]))
    assert [h.handler_id for h in telemetry.list_handlers("a.x")] == ["h1"]
    assert [h.handler_id for h in telemetry.list_handlers("b.c")] == ["h2"]


def test_span_emits_start_and_stop_with_duration() -> None:
    seen: Seen = []
    telemetry.attach("span", "job.*", recorder(seen))
    with telemetry.span("job", {"model": "m"}) as extra:
        extra["response"] = "done"
    assert [s[0] for s in seen] == ["job.start", "job.stop"]
    start, stop = seen
    assert start[2] == {"model": "m"}
    assert {"system_time", "monotonic_time"} <= start[1].keys()
    assert stop[1]["duration"] >= 0
    assert stop[1]["monotonic_time"] - stop[1]["duration"] == start[1]["monotonic_time"]
    assert stop[2] == {"model": "m", "response": "done"}


def test_span_emits_exception_and_reraises() -> None:
    seen: Seen = []
    telemetry.attach("span", "job.*", recorder(seen))
    with pytest.raises(KeyError, match="missing"), telemetry.span("job", {"model": "m"}):
        raise KeyError("missing")
    assert [s[0] for s in seen] == ["job.start", "job.exception"]
    _, measurements, metadata, _ = seen[1]
    assert measurements["duration"] >= 0
    assert metadata == {"model": "m", "kind": "KeyError", "reason": "'missing'"}


def test_a_handler_failing_inside_a_span_does_not_break_the_block() -> None:
    def broken(*_args: Any) -> None:
        raise RuntimeError("handler bug")

    telemetry.attach("broken", "job.*", broken)
    with telemetry.span("job") as extra:
        extra["ok"] = True
    assert telemetry.list_handlers("job.stop") == ()


def test_many_distinct_event_names_still_reach_handlers() -> None:
    seen: Seen = []
    telemetry.attach("pre", "job.*", recorder(seen))
    for i in range(5_000):  # more names than the resolution cache keeps
        telemetry.execute(f"job.{i}")
    telemetry.attach("late", "job.*", recorder(seen))
    telemetry.execute("job.0")
    assert len(seen) == 5_002
