"""tinker-cookbook's own supervised loop, unmodified, against the server on crucible/tiny-chat.

The cookbook lives in its own venv (``scripts/cookbook_venv``: it pins an older transformers
than Crucible's), so it runs as a subprocess, ``cookbook_sft.py`` with that venv's python,
against a server running in this process. Without that venv the test skips and says how to
make it, except where ``CRUCIBLE_REQUIRE_COOKBOOK=1`` (set by ``.ci/run``): there it fails.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tinker

from crucible.recipes import TaskDatasetStore
from crucible.tinker_server import RunningServer, ServerConfig, running_server

from .tinker_kit import API_KEY

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("cookbook_sft.py")
MODEL = "crucible/tiny-chat"
# The cookbook saves every 2 steps once a step is finished; it finishes a step after it has
# submitted the next one, so a preemption before batch 5 leaves the checkpoint of step 2.
INTERRUPT_AT_BATCH = 5


def cookbook_python() -> Path:
    python = Path(os.environ.get("CRUCIBLE_COOKBOOK_VENV", REPO / ".venv-cookbook")) / "bin/python"
    if not python.exists():
        reason = f"no tinker-cookbook venv at {python.parent.parent} (scripts/cookbook_venv)"
        if os.environ.get("CRUCIBLE_REQUIRE_COOKBOOK") == "1":
            pytest.fail(f"the cookbook test is required (CRUCIBLE_REQUIRE_COOKBOOK=1): {reason}")
        pytest.skip(f"cookbook test skipped: {reason}")
    return python


@pytest.fixture(scope="module")
def cookbook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("cookbook_server")
    config = ServerConfig(
        port=0,
        root=root / "checkpoints",
        api_keys={API_KEY},
        models=(MODEL,),
        hf_cache=root / "hf-cache",
        torch_threads=1,
    )
    with running_server(config) as running:
        yield running


def write_conversations(path: Path, count: int) -> Path:
    """The default tasks as the cookbook's conversation JSONL (generated, nothing downloaded)."""
    splits = TaskDatasetStore().load_sync()
    with path.open("w") as out:
        for conversation in (*splits.train, *splits.test)[:count]:
            messages = [{"role": m.role, "content": m.content} for m in conversation.messages]
            out.write(json.dumps({"messages": messages}) + "\n")
    return path


def run_cookbook(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    assert server.config.hf_cache is not None
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TINKER_", "HF_", "PYTHON"))
    }
    env.update(
        TINKER_API_KEY=API_KEY,
        TINKER_TELEMETRY="0",
        HF_HUB_CACHE=str(server.config.hf_cache),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return subprocess.run(
        [str(cookbook_python()), str(DRIVER), "--base-url", server.base_url, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def summary(process: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert process.stdout.strip(), process.stderr[-4000:]
    return dict(json.loads(process.stdout.strip().splitlines()[-1]))


def metrics(log_path: Path) -> list[dict[str, Any]]:
    lines = (log_path / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_the_cookbook_trains_checkpoints_resumes_and_evaluates(
    cookbook_server: RunningServer, tmp_path: Path
) -> None:
    cookbook_python()  # skip (or fail in CI) before doing any work
    data = write_conversations(tmp_path / "conversations.jsonl", count=72)  # 56 train, 16 test
    log_path = tmp_path / "sft"
    common = ("--data", str(data), "--log-path", str(log_path), "--model-name", MODEL)

    # A run preempted before batch 5 leaves the cookbook's periodic checkpoints behind.
    first = run_cookbook(cookbook_server, *common, "--interrupt-at-batch", str(INTERRUPT_AT_BATCH))
    assert first.returncode == 3, first.stderr[-4000:]
    assert summary(first) == {"interrupted": f"preempted before batch {INTERRUPT_AT_BATCH}"}
    records = [
        json.loads(line) for line in (log_path / "checkpoints.jsonl").read_text().splitlines()
    ]
    assert [r["batch"] for r in records] == [2]
    last_state = records[-1]["state_path"]
    first_metrics = metrics(log_path)

    # Run again: the cookbook resumes from its own checkpoints.jsonl, with the optimizer state.
    second = run_cookbook(cookbook_server, *common)
    assert second.returncode == 0, second.stderr[-4000:]
    assert f"Resumed training from {last_state}" in second.stderr
    result = summary(second)
    resumed = result["checkpoints"][len(records) :]
    assert [r["name"] for r in resumed] == ["000002", "000004", "000006", "final"]
    assert resumed[-1]["epoch"] == 1 and resumed[-1]["sampler_path"].startswith("tinker://")

    # Evaluated (the cookbook's held-out NLL, through a sampler of the current weights), and
    # the resumed run went on learning from where the first one stopped.
    steps = {m["step"]: m for m in metrics(log_path)}
    assert min(steps) == 0 and max(steps) == 6  # 56 / 8 = 7 batches
    assert [m["step"] for m in first_metrics] == [0, 1, 2, 3]
    evals = {step: m["test/nll"] for step, m in steps.items() if "test/nll" in m}
    assert sorted(evals) == [0, 3, 6] and all(math.isfinite(v) for v in evals.values())
    assert evals[6] < evals[0], evals

    # Sampling the final checkpoint through the registered renderer stops at <|end|>.
    assert [s["end"] for s in result["samples"]] == ["stop_sequence"] * 2, result["samples"]

    # The server knows the resumed run's checkpoints by the cookbook's paths.
    rest = tinker.RestClient(base_url=cookbook_server.base_url, api_key=API_KEY)
    run = rest.get_training_run_by_tinker_path(resumed[-1]["state_path"]).result()
    assert run.base_model == MODEL
