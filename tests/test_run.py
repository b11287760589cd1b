"""The `python -m crucible.run` demo: a crashing worker ends with a crash-free run's result."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crucible.run import main


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_survives_crashes_with_identical_result(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--steps", "30", "--crash-rate", "0.1", "--seed", "3", "--backend", backend]) == 0
    out = capsys.readouterr().out
    assert "crashed: RuntimeError: backend call failed" in out
    assert "resuming from the checkpoint" in out
    assert ": identical" in out


def test_module_entry_point_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crucible.run", "--steps", "10"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "identical" in done.stdout
