"""``python -m crucible.plot``: plots redrawn from a run's metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible.metrics import MetricRecord
from crucible.plot import main, read_series

PNG = b"\x89PNG\r\n\x1a\n"


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    lines = []
    for step in range(1, 11):
        lines.append(MetricRecord("r", "train/loss", 2.0 / step, step))
        lines.append(MetricRecord("r", "train/lr", 1e-3, step))
        if step % 5 == 0:
            lines.append(MetricRecord("r", "eval/nll", 2.5 / step, step))
    import msgspec

    text = b"".join(msgspec.json.encode(r) + b"\n" for r in lines) + b'{"torn'
    (run / "metrics.jsonl").write_bytes(text)
    return run


def test_reads_series_sorted_and_skips_a_torn_tail(tmp_path: Path) -> None:
    series = read_series(_run_dir(tmp_path) / "metrics.jsonl")
    assert [step for step, _ in series["train/loss"]] == list(range(1, 11))
    assert series["eval/nll"] == [(5, 0.5), (10, 0.25)]


def test_redraws_the_loss_plot_and_chosen_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(tmp_path)
    assert main([str(run)]) == 0
    assert (run / "loss.png").read_bytes()[:8] == PNG
    out = tmp_path / "lr.png"
    assert main([str(run), "--metric", "train/lr", "--metric", "eval/nll", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    assert str(out) in capsys.readouterr().out


def test_unknown_metrics_and_missing_runs_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(tmp_path)
    assert main([str(run), "--metric", "train/los"]) == 2
    assert "no records of train/los" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err
