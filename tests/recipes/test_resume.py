"""Stopping, killing and resuming runs: every (metric, step) exactly once, valid JSONL
everywhere, and the final weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from crucible.recipes import ProgressReporter, StopSwitch, execute_run, load_config, prepare_run_dir
from crucible.recipes.sl_basic._stages import BuildDataset, Evaluate
from crucible.run import main
from crucible.telemetry import attach, detach

from .run_kit import (
    cli_child,
    final_weights,
    forked_cli,
    metric_steps,
    read_jsonl,
    same_weights,
    tiny_overrides,
)

# 3 epochs of 12 batches: long enough to be killed several times, about two seconds of work.
LONG = {"max_steps": 36, "epochs": 3, "eval_every": 12}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of the LONG config."""
    folder = tmp_path_factory.mktemp("reference")
    run_dir = folder / "run"
    assert main([*tiny_overrides(folder, run_dir, **LONG), "--quiet"]) == 0
    return run_dir


def _summary_numbers_on_disk(run_dir: Path) -> dict[str, Any]:
    """The summary's numbers as metrics.jsonl has them: first and last of each series."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        series.setdefault(row["metric"], []).append((row["step"], row["value"]))
    for points in series.values():
        points.sort(key=lambda point: point[0])
    numbers: dict[str, Any] = {"steps": series["train/loss"][-1][0]}
    for key, metric in (("train_loss", "train/loss"), ("eval_nll", "eval/nll")):
        numbers[f"{key}_first"] = series[metric][0][1]
        numbers[f"{key}_last"] = series[metric][-1][1]
    numbers["eval_accuracy_first"] = series["eval/accuracy"][0][1]
    numbers["eval_accuracy_last"] = series["eval/accuracy"][-1][1]
    numbers["eval_accuracy_by_task"] = {
        name.removeprefix("eval/accuracy/"): points[-1][1]
        for name, points in sorted(series.items())
        if name.startswith("eval/accuracy/")
    }
    return numbers


def _assert_like_reference(run_dir: Path, reference: Path) -> None:
    counts = metric_steps(run_dir)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert set(counts) == set(metric_steps(reference))
    for name in ("checkpoints.jsonl", "telemetry.jsonl"):
        read_jsonl(run_dir / name)  # every line parses
    summary = json.loads((run_dir / "summary.json").read_text())
    # Built from the run's state, resumes included: the same numbers as the whole file.
    numbers = _summary_numbers_on_disk(run_dir)
    assert {key: summary[key] for key in numbers} == numbers
    assert same_weights(final_weights(run_dir), final_weights(reference))


def _run_in_process(
    folder: Path, run_dir: Path, *, resume: bool, stop_at: int | None = None, **extra: Any
) -> str:
    config = load_config(None, tiny_overrides(folder, run_dir, **{**LONG, **extra}))
    resume = prepare_run_dir(config, run_dir, resume)
    switch = StopSwitch()

    def stop(_name: str, _m: Mapping[str, Any], metadata: Mapping[str, Any], _c: Any) -> None:
        if stop_at is not None and metadata.get("step") == stop_at:
            switch.request()

    attach("test.stop", "crucible_train.batch.stop", stop)
    try:
        outcome = anyio.run(
            lambda: execute_run(
                config,
                run_dir,
                resume=resume,
                reporter=ProgressReporter(mode="quiet"),
                handle_signals=False,
                stop_switch=switch,
            )
        )
    finally:
        detach("test.stop")
    return outcome.status


def test_a_stopped_and_resumed_run_ends_like_an_uninterrupted_one(
    tmp_path: Path, reference: Path
) -> None:
    run_dir = tmp_path / "run"
    assert _run_in_process(tmp_path, run_dir, resume=False, stop_at=9) == "stopped"
    # The stop saved a checkpoint of everything submitted by then (step 10: one step ahead).
    names = [row["name"] for row in read_jsonl(run_dir / "checkpoints.jsonl")]
    assert names[-1] == "step_000010"
    assert max(step for _, step in metric_steps(run_dir)) == 10
    assert _run_in_process(tmp_path, run_dir, resume=True) == "completed"
    _assert_like_reference(run_dir, reference)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == "step_000010"


def test_faults_at_20_percent_converge_to_the_weights_of_a_run_without(tmp_path: Path) -> None:
    short = {"max_steps": 10, "epochs": 1, "save_every": 1, "restart_backoff_s": 0.02}
    every_op: dict[str, Any] = {"fault_ops": []}  # sampling and deletes too, not only training
    reference = tmp_path / "reference"
    assert _run_in_process(tmp_path, reference, resume=False, **short) == "completed"
    run_dir = tmp_path / "run"
    status = _run_in_process(
        tmp_path, run_dir, resume=False, inject_faults=0.2, **short, **every_op
    )
    assert status == "completed"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["restarts"] > 0
    events = [row["event"] for row in read_jsonl(run_dir / "telemetry.jsonl")]
    assert "crucible.actor.restarted" in events  # the training tree's supervisor at work
    _assert_like_reference(run_dir, reference)


def _kill_and_resume_until_done(folder: Path, kill_seed: int, kills: int) -> tuple[Path, int]:
    """Start the LONG run, SIGKILL it at random moments up to ``kills`` times, resuming after
    each, then let the last resume finish. Returns the run directory and the kills done."""
    rng = random.Random(kill_seed)
    run_dir = folder / "run"
    argv = [*tiny_overrides(folder, run_dir, **LONG), "--quiet"]
    context = forked_cli()
    killed = 0
    while True:
        started = context.Event()
        child = context.Process(target=cli_child, args=(argv, started))
        child.start()
        if killed < kills:
            assert started.wait(timeout=60), "the run did not start"
            time.sleep(rng.uniform(0.0, 0.4))  # a random moment, not a wait for anything
            child.kill()
        child.join(timeout=120)
        if child.exitcode == 0:
            return run_dir, killed
        assert child.exitcode == -signal.SIGKILL, f"exit {child.exitcode}"
        killed += 1
        argv = ["--resume", str(run_dir), "--quiet"]


def test_sigkill_at_random_moments_then_resume_loses_and_repeats_nothing(
    tmp_path: Path, reference: Path
) -> None:
    seeds = (11, 12, 13)
    results: dict[int, tuple[Path, int] | BaseException] = {}

    def one(seed: int) -> None:
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        try:
            results[seed] = _kill_and_resume_until_done(folder, seed, kills=5)
        except BaseException as error:  # reported below, on the test's thread
            results[seed] = error

    threads = [threading.Thread(target=one, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kills = 0
    for seed in seeds:
        outcome = results[seed]
        if isinstance(outcome, BaseException):
            raise outcome
        _assert_like_reference(outcome[0], reference)
        kills += outcome[1]
    assert kills >= 10


def test_ctrl_c_saves_a_checkpoint_and_exits_130_with_the_resume_command(
    tmp_path: Path, reference: Path
) -> None:
    run_dir = tmp_path / "run"
    context = forked_cli()
    stepped = context.Event()
    stderr = tmp_path / "stderr.txt"
    argv = [*tiny_overrides(tmp_path, run_dir, **LONG), "--progress", "lines"]
    child = context.Process(
        target=cli_child, args=(argv, stepped, str(stderr), "crucible_train.batch.stop")
    )
    child.start()
    assert stepped.wait(timeout=60), "no training step"
    assert child.pid is not None
    os.kill(child.pid, signal.SIGINT)
    child.join(timeout=120)
    err = stderr.read_text()
    assert child.exitcode == 130, err
    assert "Ctrl-C" in err
    assert f"python -m crucible.run --resume {run_dir}" in err
    stopped_at = max(step for _, step in metric_steps(run_dir))
    last = read_jsonl(run_dir / "checkpoints.jsonl")[-1]
    assert last["batch"] == stopped_at < 36 and not last["final"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "stopped"
    assert main(["--resume", str(run_dir), "--quiet"]) == 0
    _assert_like_reference(run_dir, reference)


def test_a_crash_exits_1_with_the_error_and_the_resume_command_and_resume_finishes(
    tmp_path: Path,
    reference: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def crash_at_24(self: Evaluate, ctx: Any) -> None:
        if ctx.state.step == 24:
            raise RuntimeError("the GPU caught fire")
        await original(self, ctx)

    original = Evaluate.run
    monkeypatch.setattr(Evaluate, "run", crash_at_24)
    run_dir = tmp_path / "run"
    assert main([*tiny_overrides(tmp_path, run_dir, **LONG), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "stage 'evaluate' failed: RuntimeError: the GPU caught fire" in err
    assert f"resume with: python -m crucible.run --resume {run_dir}" in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    monkeypatch.setattr(Evaluate, "run", original)
    assert main(["--resume", str(run_dir), "--quiet"]) == 0
    _assert_like_reference(run_dir, reference)


def test_a_crash_before_any_checkpoint_advises_no_resume_and_a_resume_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def crash(self: BuildDataset, ctx: Any) -> None:
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(BuildDataset, "run", crash)  # before the first step
    run_dir = tmp_path / "run"
    assert main([*tiny_overrides(tmp_path, run_dir), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "the GPU caught fire" in err and "--resume" not in err
    assert "there is no checkpoint to resume from" in err
    assert main(["--resume", str(run_dir), "--quiet"]) == 2
    assert "ended without a checkpoint to continue from" in capsys.readouterr().err


def _flip_inside_a_tensor(file: Path) -> None:
    import torch

    payload = torch.load(file, weights_only=True)
    tensor = max(payload["lora_state"].values(), key=lambda t: t.numel())
    data = bytearray(file.read_bytes())
    at = data.find(tensor.contiguous().numpy().tobytes())
    assert at > 0
    data[at + tensor.numel() * tensor.element_size() // 2] ^= 0x5A
    file.write_bytes(bytes(data))


def test_a_resume_passes_over_a_damaged_checkpoint_to_the_previous_good_one(
    tmp_path: Path, reference: Path
) -> None:
    run_dir = tmp_path / "run"
    assert _run_in_process(tmp_path, run_dir, resume=False, stop_at=9) == "stopped"
    rows = read_jsonl(run_dir / "checkpoints.jsonl")
    assert [row["name"] for row in rows][-2:] == ["step_000008", "step_000010"]
    run_id, _, name = rows[-1]["state_path"].removeprefix("local://").partition("/weights/")
    _flip_inside_a_tensor(run_dir / "checkpoints" / run_id / name / "state.pt")
    assert _run_in_process(tmp_path, run_dir, resume=True) == "completed"
    _assert_like_reference(run_dir, reference)  # same metrics once each, same final weights
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == "step_000008"
    names = [row["name"] for row in read_jsonl(run_dir / "checkpoints.jsonl")]
    assert len(names) == len(set(names))  # one line per checkpoint name
