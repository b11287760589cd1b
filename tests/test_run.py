"""``python -m crucible.run`` end to end on the local backend with a tiny config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crucible.run import main

from .recipes.run_kit import metric_steps, read_jsonl, tiny_overrides


def test_a_run_writes_every_file_in_its_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main([*tiny_overrides(tmp_path, run_dir), "--progress", "lines"]) == 0
    out = capsys.readouterr()
    assert "run completed" in out.out
    assert "step 8/8" in out.err

    config = json.loads((run_dir / "config.json").read_text())
    assert config["batch_size"] == 4 and config["log_dir"] == str(run_dir)

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert all(
        set(r) == {"run_id", "metric", "value", "step", "timestamp", "metadata"} for r in metrics
    )
    counts = metric_steps(run_dir)
    assert max(counts.values()) == 1, "each (metric, step) exactly once"
    assert {step for (metric, step) in counts if metric == "train/loss"} == set(range(1, 9))
    assert {step for (metric, step) in counts if metric == "eval/nll"} == {0, 4, 8}
    for name in ("train/lr", "train/tokens", "train/tokens_per_s", "train/step_time_s"):
        assert (name, 8) in counts

    checkpoints = read_jsonl(run_dir / "checkpoints.jsonl")
    assert [c["name"] for c in checkpoints] == [f"step_{s:06d}" for s in (2, 4, 6, 8)]
    assert checkpoints[-1]["final"] and checkpoints[-1]["sampler_path"]
    assert checkpoints[1]["eval_nll"] > 0  # the step-4 checkpoint carries its evaluation

    events = {row["event"] for row in read_jsonl(run_dir / "telemetry.jsonl")}
    assert {
        "crucible_kitchen.workflow.run.start",
        "crucible_kitchen.workflow.run.stop",
        "crucible_kitchen.stage.run.start",
        "crucible_kitchen.stage.run.stop",
        "crucible_train.training.start",
        "crucible_train.batch.stop",
        "crucible_train.checkpoint.saved",
        "crucible_train.training.stop",
    } <= events

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 8
    assert summary["train_loss_last"] < summary["train_loss_first"]
    assert summary["model_id"] is not None
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_conversations_cut_at_max_length_are_counted_in_metrics_and_summary(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    # every prompt of the tiny dataset is longer than 12 tokens: each conversation is cut
    # before its answer, so each is also left with nothing to train on
    assert main([*tiny_overrides(tmp_path, run_dir, max_length=12, max_steps=4)]) == 0
    records = read_jsonl(run_dir / "metrics.jsonl")
    for name in ("data/truncated_total", "data/skipped_total"):
        totals = [r["value"] for r in records if r["metric"] == name]
        assert totals == [4.0, 8.0, 12.0, 16.0], name  # 4 steps x 4 conversations, running
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["conversations_truncated"] == summary["conversations_skipped"] == 16


def test_an_existing_run_dir_is_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    assert main([*tiny_overrides(tmp_path, run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err
    assert (run_dir / "config.json").read_text() == "{}"


def test_resume_of_a_missing_run_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--resume", str(tmp_path / "nothing")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_tinker_backend_without_api_key_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    code = main([*tiny_overrides(tmp_path, tmp_path / "run"), "--backend", "tinker", "--quiet"])
    assert code == 2
    assert "TINKER_API_KEY" in capsys.readouterr().err


def test_module_entry_point_prints_the_resolved_config() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crucible.run", "lr=1e-3", "--print-config", "lr_schedule=linear"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["lr"] == 1e-3 and config["lr_schedule"] == "linear"
    assert config["dataset"] == "default" and config["backend"] == "local"


def test_the_tinker_backend_runs_the_recipe_through_the_sdk_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unmodified Tinker SDK against crucible's Tinker-compatible server."""
    from crucible.tinker_server import ServerConfig, running_server

    monkeypatch.setenv("TINKER_API_KEY", "tml-crucible-test")
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    run_dir = tmp_path / "run"
    server_config = ServerConfig(port=0, root=tmp_path / "server", long_poll_s=5.0)
    with running_server(server_config) as server:
        overrides = tiny_overrides(
            tmp_path, run_dir, max_steps=4, tinker_base_url=server.base_url, lora_rank=4
        )
        assert main([*overrides, "--backend", "tinker", "--quiet"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["backend"] == "tinker"
    assert summary["sampler_path"].startswith("tinker://")
    assert metric_steps(run_dir)[("train/loss", 4)] == 1


def test_a_run_continued_from_another_records_it_as_parent(tmp_path: Path) -> None:
    from crucible.training import RegistryStore

    first, second = tmp_path / "first", tmp_path / "second"
    assert main([*tiny_overrides(tmp_path, first, max_steps=2), "--quiet"]) == 0
    overrides = tiny_overrides(tmp_path, second, max_steps=2, init_from=str(first))
    assert main([*overrides, "--quiet"]) == 0
    parent_id = json.loads((first / "summary.json").read_text())["model_id"]
    child_id = json.loads((second / "summary.json").read_text())["model_id"]
    store = RegistryStore(tmp_path / "registry.sqlite")
    try:
        assert store.get(child_id).parent_id == parent_id
        assert [m.id for m in store.ancestors(child_id)] == [parent_id]
    finally:
        store.close()
    # It started from the first run's weights: its first loss is the first run's last.
    first_losses = [r for r in read_jsonl(first / "metrics.jsonl") if r["metric"] == "eval/nll"]
    second_losses = [r for r in read_jsonl(second / "metrics.jsonl") if r["metric"] == "eval/nll"]
    assert second_losses[0]["value"] == pytest.approx(first_losses[-1]["value"], rel=1e-5)


def test_a_run_continued_past_its_end_registers_a_new_version_with_the_old_as_parent(
    tmp_path: Path,
) -> None:
    from crucible.training import RegistryStore

    run_dir = tmp_path / "run"
    first, *rest = tiny_overrides(tmp_path, run_dir, max_steps=4)
    assert main([first, "--quiet", *rest]) == 0  # options and overrides in any order
    assert main(["--resume", str(run_dir), "--quiet"]) == 0  # already done: nothing new
    assert main(["--quiet", "max_steps=6", "--resume", str(run_dir)]) == 0
    store = RegistryStore(tmp_path / "registry.sqlite")
    try:
        models = store.list_models("sl_basic", None, None)
    finally:
        store.close()
    by_version = {m.version: m for m in models}
    assert set(by_version) == {"run", "run@step6"}
    assert by_version["run@step6"].parent_id == by_version["run"].id
    assert metric_steps(run_dir)[("train/loss", 6)] == 1
    assert max(metric_steps(run_dir).values()) == 1


def test_dry_run_checks_config_backend_and_every_data_line_and_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main([*tiny_overrides(tmp_path, run_dir, epochs=2), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "48 training and 8 test conversations; 8 steps of 4 (12 per epoch)" in out
    assert "forward_backward, await_fb, optim_step, await_optim" in out
    assert not run_dir.exists()
    overrides = tiny_overrides(tmp_path, run_dir)
    train = tmp_path / "train.jsonl"
    train.write_text(train.read_text() + "{broken\n")
    assert main([*overrides, "--dry-run"]) == 2
    assert "train.jsonl:49: not valid JSON" in capsys.readouterr().err


def test_a_resume_first_removes_the_temporaries_a_killed_write_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main([*tiny_overrides(tmp_path, run_dir, max_steps=2), "--quiet"]) == 0
    stale = [run_dir / ".summary.json.x1.tmp", run_dir / "checkpoints" / ".state.pt.x2.tmp"]
    for path in stale:
        path.write_bytes(b"half a write")
    keep = run_dir / "notes.tmp"  # not one of ours: no leading dot
    keep.write_text("mine")
    capsys.readouterr()
    assert main(["--resume", str(run_dir), "--progress", "lines"]) == 0
    assert "removed 2 stale temporary files" in capsys.readouterr().err
    assert not any(path.exists() for path in stale) and keep.exists()
