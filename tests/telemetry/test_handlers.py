import io
import json
from pathlib import Path

from crucible import telemetry
from crucible.telemetry import ConsoleHandler, JsonlHandler, format_step


def test_console_prints_one_line_per_training_step() -> None:
    stream = io.StringIO()
    handler = ConsoleHandler(stream=stream)
    telemetry.execute(
        "crucible_train.batch.stop",
        {"loss": 1.23456, "learning_rate": 1e-4, "gradient_norm": 2.0, "duration": 12_300_000},
        {"epoch": 1, "batch": 20},
    )
    telemetry.execute("req_llm.request.stop", {"duration": 1}, {})  # not a training step
    handler.close()
    telemetry.execute("crucible_train.batch.stop", {"loss": 9.0}, {})
    assert stream.getvalue().splitlines() == [
        "batch.stop epoch=1 batch=20 loss=1.2346 lr=1.00e-04 grad_norm=2.000 12.3ms"
    ]


def test_format_step_skips_malformed_values() -> None:
    line = format_step("crucible_train.batch.stop", {"loss": "high"}, {"epoch": 1.5})
    assert line == "batch.stop"


def test_jsonl_handler_writes_and_drops_what_json_cannot_hold(tmp_path: Path) -> None:
    with JsonlHandler(tmp_path) as handler:
        assert handler.path == tmp_path / "telemetry.jsonl"
        telemetry.execute("a.stop", {"duration": 5}, {"model": "m", "obj": object()})
        telemetry.execute("b.start", {"x": float("inf")}, {"nested": {"k": [1, 2]}})
    telemetry.execute("a.stop", {}, {})  # after close: not written, no error
    lines = [json.loads(line) for line in handler.path.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["a.stop", "b.start"]
    assert lines[0]["measurements"] == {"duration": 5}
    assert lines[0]["metadata"] == {"model": "m"}
    assert lines[1]["measurements"] == {"x": None}
    assert lines[1]["metadata"] == {"nested": {"k": [1, 2]}}
    assert lines[0]["timestamp"].endswith("+00:00")
    assert telemetry.list_handlers("a.stop") == ()


def test_jsonl_handler_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    for run in range(2):
        with JsonlHandler(path, events=["x.y"]):
            telemetry.execute("x.y", {"run": run}, {})
            telemetry.execute("x.z", {"run": run}, {})
    runs = [json.loads(line)["measurements"]["run"] for line in path.read_text().splitlines()]
    assert runs == [0, 1]
