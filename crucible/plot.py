"""``python -m crucible.plot RUN_DIR [--metric NAME ...] [--out FILE]``: plots from metrics.jsonl.

Without ``--metric``: ``loss.png`` with train loss and eval NLL (per token) against step and
the learning rate on a second axis, as a run draws it at its end. With ``--metric``: those
metrics against step (``metrics.png`` unless ``--out`` says otherwise). Needs matplotlib (the
``local`` extra); uses the Agg backend, so no display is needed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crucible.metrics import read_metrics_file

TRAIN_LOSS, EVAL_LOSS, LEARNING_RATE = "train/loss", "eval/nll", "train/lr"


def read_series(metrics_path: Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} sorted by step; records without a step and lines that
    are not records (a torn tail) are skipped."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics_file(metrics_path):
        if record.step is not None:
            series.setdefault(record.metric, []).append((record.step, record.value))
    for points in series.values():
        points.sort()
    return series


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, and no GUI toolkit imported
    import matplotlib.pyplot as plt

    return plt


def plot_run(
    run_dir: str | Path,
    metrics: Sequence[str] | None = None,
    out: str | Path | None = None,
) -> Path:
    """Draw the run's plot; returns the PNG's path. Raises FileNotFoundError without
    metrics.jsonl and KeyError naming unknown metrics."""
    plt = _pyplot()
    run = Path(run_dir)
    source = run / "metrics.jsonl"
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist; is {run} a run directory?")
    series = read_series(source)
    if metrics:
        unknown = [m for m in metrics if m not in series]
        if unknown:
            known = ", ".join(sorted(series)) or "none"
            raise KeyError(f"no records of {', '.join(unknown)} in {source} (it has: {known})")
    target = Path(out) if out is not None else run / ("metrics.png" if metrics else "loss.png")
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=110)
    try:
        if metrics:
            for name in metrics:
                steps, values = zip(*series[name], strict=True)
                axis.plot(steps, values, label=name, marker="." if len(steps) < 30 else None)
            axis.set_ylabel("value")
            axis.legend(loc="best")
        else:
            _loss_plot(axis, series)
        axis.set_xlabel("step")
        axis.set_title(run.name)
        axis.grid(alpha=0.3)
        figure.tight_layout()
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target)
    finally:
        plt.close(figure)
    return target


def _loss_plot(ax: Any, series: dict[str, list[tuple[int, float]]]) -> None:
    handles: list[Any] = []
    if TRAIN_LOSS in series:
        steps, values = zip(*series[TRAIN_LOSS], strict=True)
        handles += ax.plot(steps, values, color="tab:blue", label="train loss / token")
    if EVAL_LOSS in series:
        steps, values = zip(*series[EVAL_LOSS], strict=True)
        handles += ax.plot(
            steps, values, color="tab:orange", marker="o", label="eval NLL / token (test)"
        )
    ax.set_ylabel("loss (nats per token)")
    ax.set_yscale("log")
    if LEARNING_RATE in series:
        lr_axis = ax.twinx()
        steps, values = zip(*series[LEARNING_RATE], strict=True)
        handles += lr_axis.plot(
            steps, values, color="tab:gray", linestyle="--", alpha=0.7, label="learning rate"
        )
        lr_axis.set_ylabel("learning rate")
        lr_axis.set_ylim(bottom=0)
    if handles:
        ax.legend(handles=handles, loc="upper right")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crucible.plot", description=__doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--metric", action="append", metavar="NAME", help="plot this metric")
    parser.add_argument("--out", metavar="FILE", help="where to write the PNG")
    args = parser.parse_args(argv)
    try:
        path = plot_run(args.run_dir, args.metric, args.out)
    except (FileNotFoundError, KeyError) as error:
        message = error.args[0] if error.args else str(error)
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
