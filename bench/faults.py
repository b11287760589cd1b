"""Training through injected faults: ``python -m bench.faults [--rates 0.3 0.5] [KEY=VALUE ...]``.

The default run (sl_basic with the config defaults, as ``python -m crucible.run`` runs it) once
fault-free (the baseline), then with each rate of injected faults of every kind a run can
survive without a timeout (latency, transient, crash, applied_then_failed; a hang costs
``op_timeout_s`` by definition and is covered by the tests), all in this process. For each
faulty run: whether it completed, whether its final weights are bitwise those of the baseline
and its losses identical, its restarts and in-place retries, and its wall time against the
baseline's. KEY=VALUE overrides apply to every run (for example ``max_steps=30``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import attrs
import torch

from crucible.recipes import (
    ProgressReporter,
    TrainConfig,
    execute_run,
    load_config,
    prepare_run_dir,
)
from crucible.telemetry import attach, detach
from crucible.training import FAULT_KINDS

KINDS = tuple(kind for kind in FAULT_KINDS if kind != "hang")


@attrs.frozen
class Outcome:
    status: str
    wall_s: float
    restarts: int
    retries: int
    losses: list[tuple[str, int, float]]
    weights: dict[str, torch.Tensor]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The final state checkpoint's trainable weights (the newest line of checkpoints.jsonl)."""
    from crucible.training import latest_state_checkpoint
    from crucible.training.backends.local import CheckpointPath

    record = latest_state_checkpoint(run_dir)
    assert record is not None and record.state_path is not None, f"no checkpoint in {run_dir}"
    state = torch.load(
        CheckpointPath.parse(record.state_path).file(run_dir / "checkpoints"),
        map_location="cpu",
        weights_only=False,
    )
    tensors: dict[str, torch.Tensor] = {}

    def collect(prefix: str, value: Any) -> None:  # whatever the file's layout, every tensor
        if isinstance(value, torch.Tensor):
            tensors[prefix] = value
        elif isinstance(value, dict):
            for key, inner in value.items():
                collect(f"{prefix}/{key}", inner)
        elif isinstance(value, (list, tuple)):
            for index, inner in enumerate(value):
                collect(f"{prefix}/{index}", inner)

    collect("", state)
    return tensors


def _losses(run_dir: Path) -> list[tuple[str, int, float]]:
    """Every training loss and evaluation NLL the run recorded, by step."""
    losses = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["metric"] in ("train/loss", "eval/nll"):
            losses.append((record["metric"], record["step"], record["value"]))
    return sorted(losses)


def run_once(config: TrainConfig, root: Path, label: str) -> Outcome:
    run_dir = root / label
    config = attrs.evolve(config, log_dir=str(run_dir), name=label)
    prepare_run_dir(config, run_dir, resume=False)
    retries: list[object] = []
    handler_id = f"bench.faults:{label}"
    attach(handler_id, ["crucible.session.retry"], lambda *event: retries.append(event))
    started = time.perf_counter()
    try:
        outcome = anyio.run(
            lambda: execute_run(
                config,
                run_dir,
                resume=False,
                reporter=ProgressReporter(mode="quiet"),
                handle_signals=False,
            )
        )
    finally:
        detach(handler_id)
    wall = time.perf_counter() - started
    weights = _final_weights(run_dir) if outcome.status == "completed" else {}
    return Outcome(outcome.status, wall, outcome.restarts, len(retries), _losses(run_dir), weights)


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return bool(a) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument(
        "--keep", type=Path, help="write the runs here (kept) instead of a temp dir"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides for every run")
    args = parser.parse_args(argv)
    config = load_config(None, args.overrides)
    print(
        f"bench.faults: sl_basic defaults (base_model={config.base_model}, "
        f"max_steps={config.max_steps}, batch_size={config.batch_size}), faults of kinds "
        f"{', '.join(KINDS)} on ops {', '.join(config.fault_ops) or 'all'}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        root = args.keep or Path(tmp)
        # Imports, torch's first kernels and file caches are paid once, here, by neither run.
        run_once(attrs.evolve(config, max_steps=1, eval_examples=1), root, "warm-up")
        baseline = run_once(config, root, "baseline")
        assert baseline.status == "completed", f"the fault-free run ended {baseline.status}"
        print(
            f"  {'faults':>6} {'status':>9} {'weights':>9} {'losses':>9} {'restarts':>8}"
            f" {'retries':>7} {'baseline s':>10} {'ours s':>8} {'ratio':>6}"
        )
        print(
            f"  {0.0:6.0%} {baseline.status:>9} {'-':>9} {'-':>9} {baseline.restarts:8d}"
            f" {baseline.retries:7d} {baseline.wall_s:10.1f} {baseline.wall_s:8.1f} {1.0:6.2f}"
        )
        for index, rate in enumerate(args.rates):
            faulty_config = attrs.evolve(config, inject_faults=rate, fault_kinds=KINDS)
            ours = run_once(faulty_config, root, f"faults-{index}-{int(rate * 100)}")
            same = _same_weights(ours.weights, baseline.weights)
            print(
                f"  {rate:6.0%} {ours.status:>9} {'bitwise' if same else 'DIFFER':>9}"
                f" {'same' if ours.losses == baseline.losses else 'DIFFER':>9}"
                f" {ours.restarts:8d} {ours.retries:7d} {baseline.wall_s:10.1f}"
                f" {ours.wall_s:8.1f} {ours.wall_s / baseline.wall_s:6.2f}"
            )


if __name__ == "__main__":
    main()
