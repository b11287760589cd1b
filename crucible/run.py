"""``python -m crucible.run [CONFIG.toml] [key=value ...]``: supervised fine-tuning, the main job.

With no arguments: LoRA fine-tuning of the shipped local base model on generated addition
and word-reversal dialogues, about a minute on two CPU cores; the run directory (default
``runs/<name>-<timestamp>``) then holds config.json, metrics.jsonl, checkpoints.jsonl,
telemetry.jsonl, loss.png and summary.json. Ctrl-C saves a checkpoint and prints the command
that resumes the run; so does a crash. See docs/quickstart.md and docs/recipes.md.

This module is the command line only: arguments, progress, the plot and the printed summary,
exit codes. The job itself (``execute_run``) lives in crucible.recipes.

Exit status: 0 done, 1 failed, 2 bad configuration or usage, 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from crucible.recipes import (
    BackendUnavailable,
    ConfigError,
    DatasetError,
    MissingAdapters,
    ProgressReporter,
    RunDirExists,
    RunOutcome,
    StageFailed,
    TrainConfig,
    check_run,
    config_to_dict,
    default_run_dir,
    execute_run,
    load_config,
    prepare_run_dir,
    resume_command,
    run_dir_files,
)
from crucible.recipes.sl_basic import SL_BASIC

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m crucible.run",
        description="Supervised fine-tuning (sl_basic). Arguments: an optional CONFIG.toml, "
        "then key=value overrides (e.g. lr=1e-3 lr_schedule=cosine max_steps=50).",
    )
    parser.add_argument("args", nargs="*", metavar="CONFIG.toml | key=value")
    parser.add_argument("--print-config", action="store_true", help="show the resolved config")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR (or log_dir) from its last checkpoint",
    )
    parser.add_argument("--backend", choices=["local", "tinker"])
    parser.add_argument(
        "--inject-faults",
        type=float,
        metavar="RATE",
        help="run on the FaultyBackend: this share of backend calls fails",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the final summary")
    parser.add_argument(
        "--progress",
        choices=["auto", "bar", "lines"],
        default="auto",
        help="a progress bar on a terminal, plain lines otherwise (auto)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check the config and the recipe, then stop"
    )
    return parser


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The config from the arguments, and whether this is a resume."""
    paths = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if len(paths) > 1:
        raise ConfigError(f"give at most one config file, got {', '.join(paths)}")
    if args.backend is not None:
        overrides.append(f"backend={args.backend!r}")
    if args.inject_faults is not None:
        overrides.append(f"inject_faults={args.inject_faults!r}")
    base: dict[str, Any] | None = None
    resume = args.resume is not None
    if args.resume:
        run_dir = Path(args.resume)
        files = run_dir_files(run_dir)
        if not files.config.exists():
            raise ConfigError(f"--resume {run_dir}: no {files.config.name} there; is it a run?")
        base = files.read_config()
        overrides.append(f"log_dir={str(run_dir)!r}")
    config = load_config(paths[0] if paths else None, overrides, base=base)
    if resume and config.log_dir is None:
        raise ConfigError("--resume needs a run directory: --resume RUN_DIR (or log_dir=...)")
    return config, resume


def _ask(run_dir: Path) -> str:
    if not sys.stdin.isatty():
        return "raise"
    answer = input(f"{run_dir} already holds a run: [r]esume, [d]elete it, or [a]bort? ")
    return {"r": "resume", "d": "delete"}.get(answer.strip().lower()[:1], "raise")


def dry_run(config: TrainConfig) -> int:
    """Check everything that can be checked without training and say what the run would do."""
    try:
        check = check_run(config)
    except (BackendUnavailable, DatasetError, MissingAdapters, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    skipped = f", {check.skipped_lines} bad lines skipped" if check.skipped_lines else ""
    plan = check.plan
    print(
        f"config ok: {check.train_examples} training and {check.test_examples} test "
        f"conversations{skipped}; {plan.total_steps} steps of {config.batch_size} "
        f"({plan.batches_per_epoch} per epoch) on the {config.backend} backend\n"
        f"recipe {SL_BASIC.name}: {', '.join(SL_BASIC.stage_names())}"
    )
    return EXIT_OK


def _print_summary(outcome: RunOutcome, out: Any) -> None:
    s = outcome.summary

    def pct(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    tasks = ", ".join(f"{k} {pct(v)}" for k, v in s.get("eval_accuracy_by_task", {}).items())
    lines = [
        f"run {outcome.status}: {outcome.run_dir}",
        f"  steps {s.get('steps')}  wall time {s.get('wall_time_s')} s  "
        f"restarts {outcome.restarts}",
        f"  train loss {num(s.get('train_loss_first'))} -> {num(s.get('train_loss_last'))}",
        f"  eval nll {num(s.get('eval_nll_first'))} -> {num(s.get('eval_nll_last'))}  "
        f"exact match {pct(s.get('eval_accuracy_first'))} -> "
        f"{pct(s.get('eval_accuracy_last'))}" + (f" ({tasks})" if tasks else ""),
    ]
    if outcome.model_id is not None:
        lines.append(f"  registered as model {outcome.model_id}")
    print("\n".join(lines), file=out, flush=True)


def _plot_quietly(run_dir: Path, reporter: ProgressReporter) -> None:
    try:
        from crucible.plot import plot_run

        plot_run(run_dir)
    except Exception as error:  # a plot must never turn a finished run into a failure
        reporter.print(f"(could not draw loss.png: {type(error).__name__}: {error})")


def _run_and_plot(
    config: TrainConfig, run_dir: Path, resume: bool, reporter: ProgressReporter
) -> RunOutcome:
    """The job, then loss.png from what it recorded, however the job ended."""
    try:
        return anyio.run(_main_async, config, run_dir, resume, reporter)
    finally:
        _plot_quietly(run_dir, reporter)


async def _main_async(
    config: TrainConfig, run_dir: Path, resume: bool, reporter: ProgressReporter
) -> RunOutcome:
    return await execute_run(config, run_dir, resume=resume, reporter=reporter)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config, resume = resolve_config(args)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        print(json.dumps(config_to_dict(config), indent=2))
        return EXIT_OK
    if args.dry_run:
        return dry_run(config)
    run_dir = default_run_dir(config)
    try:
        resume = prepare_run_dir(config, run_dir, resume, ask=_ask)
    except (RunDirExists, BackendUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    mode = "quiet" if args.quiet else args.progress
    reporter = ProgressReporter(mode=mode)
    if not args.quiet:
        verb = "resuming" if resume else "starting"
        reporter.print(f"{verb} {config.name} in {run_dir} (backend {config.backend})")
    try:
        outcome = _run_and_plot(config, run_dir, resume, reporter)
    except KeyboardInterrupt:
        reporter.close()
        print(f"\naborted; resume with: {resume_command(run_dir)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (BackendUnavailable, ConfigError) as error:
        reporter.close()
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except StageFailed as failure:
        reporter.close()
        print(f"error: {failure}", file=sys.stderr)
        if isinstance(failure.error, DatasetError | ConfigError):
            return EXIT_USAGE  # bad input: resuming would not help
        print(f"the run stopped; resume with: {resume_command(run_dir)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:
        reporter.close()
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        print(f"the run stopped; resume with: {resume_command(run_dir)}", file=sys.stderr)
        return EXIT_FAILED
    reporter.close()
    _print_summary(outcome, sys.stdout)
    if outcome.status == "stopped":
        print(f"stopped; resume with: {resume_command(run_dir)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
