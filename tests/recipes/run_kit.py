"""Helpers for end-to-end tests of the sl_basic recipe and the CLI: a tiny dataset, a tiny
config that runs in about a second, and readers for what a run leaves on disk."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from crucible.recipes._tasks import addition_examples, split_examples


def write_tiny_dataset(folder: Path) -> tuple[Path, Path]:
    """48 training and 8 test addition dialogues as conversations JSONL."""
    split = split_examples(addition_examples()[::37])
    train, test = folder / "train.jsonl", folder / "test.jsonl"
    for path, examples in ((train, split.train[:48]), (test, split.test[:8])):
        path.write_text("".join(json.dumps(e.conversation()) + "\n" for e in examples))
    return train, test


def tiny_overrides(folder: Path, run_dir: Path, **extra: Any) -> list[str]:
    """key=value overrides for a run of 8 steps of 4 conversations (about a second)."""
    train, test = write_tiny_dataset(folder)
    values: dict[str, Any] = {
        "log_dir": str(run_dir),
        "dataset": str(train),
        "test_dataset": str(test),
        "batch_size": 4,
        "max_steps": 8,
        "warmup_steps": 2,
        "eval_every": 4,
        "save_every": 2,
        "eval_examples": 4,
        "eval_max_tokens": 4,
        "num_threads": 1,
        "registry_path": str(folder / "registry.sqlite"),
        "behavior_if_exists": "raise",
    }
    values.update(extra)
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line must be a JSON object (a torn or garbled line fails the test)."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        row = json.loads(line)
        assert isinstance(row, dict), f"{path}:{number} is not an object"
        rows.append(row)
    return rows


def metric_steps(run_dir: Path) -> Counter[tuple[str, int]]:
    return Counter((r["metric"], r["step"]) for r in read_jsonl(run_dir / "metrics.jsonl"))


def final_weights(run_dir: Path) -> dict[str, Any]:
    """The LoRA tensors of the run's final state checkpoint."""
    import torch

    final = [r for r in read_jsonl(run_dir / "checkpoints.jsonl") if r["final"]]
    assert final, f"{run_dir} has no final checkpoint"
    run_id, _, name = final[-1]["state_path"].removeprefix("local://").partition("/weights/")
    payload = torch.load(
        run_dir / "checkpoints" / run_id / name / "state.pt", map_location="cpu", weights_only=False
    )
    return dict(payload["lora_state"])


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def cli_child(
    argv: list[str],
    started: Any,
    stderr_path: str | None = None,
    started_on: str = "crucible_kitchen.workflow.run.start",
) -> None:
    """Run ``python -m crucible.run ARGV`` in a forked child (see ``forked_cli``), setting
    ``started`` at the first ``started_on`` event (at the default, the run directory and
    config.json exist); stderr goes to ``stderr_path`` when given."""
    import os
    import sys

    from crucible.run import main
    from crucible.telemetry import attach

    if stderr_path is not None:
        sys.stderr = open(stderr_path, "w", buffering=1)  # noqa: SIM115 (lives as long as the child)
    attach("test.started", started_on, lambda *_: started.set())
    os._exit(main(argv))


def forked_cli() -> Any:
    """A multiprocessing context whose children fork from a server that has already imported
    crucible.run (torch and all), so a child starts in milliseconds instead of seconds."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.recipes.fork_warmup", "tests.recipes.run_kit"])
    return context
