"""The first example of docs/telemetry.md runs as written."""

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).parents[2] / "docs" / "telemetry.md"

pytestmark = pytest.mark.anyio


async def test_the_quick_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first_block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert first_block is not None
    source = "async def example():\n" + textwrap.indent(first_block.group(1), "    ")
    source += "    return exp, live, report\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, str(DOC), "exec"), namespace)
    monkeypatch.chdir(tmp_path)  # the example exports to a relative path
    exp, live, report = await namespace["example"]()
    assert live.event_counts == {
        "crucible_framework.stage.start": 1,
        "crucible_train.batch.stop": 1,
        "crucible_framework.stage.stop": 1,
    }
    assert report.latency.count == 2  # the batch (41 ms) and the stage's own duration
    assert (tmp_path / "lr-sweep.csv").read_text().startswith("accuracy,batch,")
    assert exp.name == "lr-sweep"
