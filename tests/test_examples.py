"""The scripts in examples/ run as written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_embedded_torch_loop_records_checkpoints_and_registers(tmp_path: Path) -> None:
    run_dir = tmp_path / "sine"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "embedded_torch_loop.py"), str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "registered sine-mlp version sine (id 1)" in done.stdout
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 301))
    assert metrics[-1]["value"] < metrics[0]["value"] / 10
    checkpoints = [
        json.loads(line) for line in (run_dir / "checkpoints.jsonl").read_text().splitlines()
    ]
    assert [c["batch"] for c in checkpoints] == [100, 200, 300]
    assert checkpoints[-1]["final"] and Path(checkpoints[-1]["sampler_path"]).exists()
    assert (run_dir / "registry.sqlite").exists()
