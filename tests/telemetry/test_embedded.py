"""A synchronous trainer: the runtime runs on a background thread, events come from the
trainer's thread."""

import pytest

from crucible import telemetry
from crucible.actors import embedded
from crucible.telemetry import Telemetry


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_trainer_with_an_embedded_runtime(backend: str) -> None:
    with embedded(backend) as rt:  # type: ignore[arg-type]
        hub = Telemetry(runtime=rt.runtime)
        exp = rt.run(hub.start_experiment, "sync-trainer")
        for step in range(10):
            telemetry.execute(
                "crucible_train.batch.stop",
                {"loss": 2.0 - step / 10, "duration": 3_000_000},
                {"experiment_id": exp.id, "batch": step},
            )
        snap = rt.run(hub.live_metrics, exp.id)
        assert snap.event_counts == {"crucible_train.batch.stop": 10}
        assert snap.latency.mean == 3.0
        assert [e.loss for e in hub.events(exp.id)] == [2.0 - s / 10 for s in range(10)]
        rt.run(hub.aclose)
