"""``python -m crucible.run [CONFIG.toml] [key=value ...]``: supervised fine-tuning, the main job.

With no arguments: LoRA fine-tuning of the shipped local base model on generated addition
and word-reversal dialogues, about a minute on two CPU cores; the run directory (default
``runs/<name>-<timestamp>``) then holds config.json, metrics.jsonl, checkpoints.jsonl,
telemetry.jsonl, loss.png and summary.json. Ctrl-C saves a checkpoint and prints the command
that resumes the run; so does a crash, when there is a checkpoint to resume from. Bad input is
found before the run directory is made (``check_run``). See docs/quickstart.md and
docs/recipes.md.

This module is the command line only: arguments (options and overrides in any order),
progress, the plot and the printed summary, exit codes. The job itself (``execute_run``) lives
in crucible.recipes.

Exit status: 0 done, 1 failed, 2 bad input (config, dataset, output directory, usage; one
line on stderr), 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio

from crucible.recipes import (
    BAD_INPUT_ERRORS,
    ConfigError,
    ProgressReporter,
    RunCheck,
    RunOutcome,
    StageFailed,
    TrainConfig,
    bad_input_in,
    check_run,
    config_to_dict,
    default_run_dir,
    execute_run,
    load_config,
    parse_overrides,
    prepare_run_dir,
    resume_advice,
    resume_point_of,
    run_dir_files,
)
from crucible.recipes.sl_basic import SL_BASIC

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """The command line itself is wrong (argparse's complaint, or options that conflict)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, and main() decides the exit
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m crucible.run",
        description="Supervised fine-tuning (sl_basic). Arguments: an optional CONFIG.toml "
        "and key=value overrides (e.g. lr=1e-3 lr_schedule=cosine max_steps=50), in any "
        "order among the options.",
    )
    parser.add_argument("args", nargs="*", metavar="CONFIG.toml | key=value")
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
        help="a progress bar on a terminal, plain lines otherwise (auto, the default)",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--print-config", action="store_true", help="show the resolved config")
    only.add_argument(
        "--dry-run", action="store_true", help="check the config and the recipe, then stop"
    )
    return parser


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """Options and CONFIG.toml/key=value arguments in any order; conflicts are UsageErrors."""
    args = _parser().parse_intermixed_args(argv)
    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        args.args.append(args.resume)  # `--resume max_steps=6`: an override, not a directory
        args.resume = ""
    if args.quiet and args.progress is not None:
        raise UsageError("--quiet and --progress contradict each other; give one")
    return args


def _conflict(option: str, given: Any, overrides: dict[str, Any], key: str) -> None:
    if key in overrides and overrides[key] != given:
        raise UsageError(
            f"{option} {given} and {key}={overrides[key]!r} contradict each other; give one"
        )


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The config from the arguments, and whether this is a resume."""
    paths = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if len(paths) > 1:
        raise ConfigError(f"give at most one config file, got {', '.join(paths)}")
    given = parse_overrides(overrides)
    if args.backend is not None:
        _conflict("--backend", args.backend, given, "backend")
        overrides.append(f"backend={args.backend!r}")
    if args.inject_faults is not None:
        _conflict("--inject-faults", args.inject_faults, given, "inject_faults")
        overrides.append(f"inject_faults={args.inject_faults!r}")
    base: dict[str, Any] | None = None
    resume = args.resume is not None
    if args.resume:
        run_dir = Path(args.resume)
        if "log_dir" in given and Path(str(given["log_dir"])) != run_dir:
            raise UsageError(
                f"--resume {run_dir} and log_dir={given['log_dir']!r} name different run "
                "directories; give one"
            )
        files = run_dir_files(run_dir)
        if not files.config.exists():
            raise ConfigError(f"--resume {run_dir}: no {files.config.name} there; is it a run?")
        try:
            base = files.read_config()
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"--resume {run_dir}: cannot read {files.config.name}: {error}"
            ) from error
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


def dry_run(config: TrainConfig, check: RunCheck) -> int:
    """Say what the checked run would do."""
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
    if outcome.skipped_lines:
        lines.append(f"  dataset: {outcome.skipped_lines} bad lines skipped (skip_bad_lines)")
    print("\n".join(lines), file=out, flush=True)


class _HeldTracebacks(logging.Handler):
    """crucible's log records while a run goes: a warning is one line on stderr at once; a
    record with a traceback (an actor crashed) is held, because the CLI reports the failure
    itself in one line, and a traceback is shown only for a bug (``show_held``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.held: list[logging.LogRecord] = []
        self._logger = logging.getLogger("crucible")
        self._propagate = self._logger.propagate

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.held.append(record)
        else:
            print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)

    def __enter__(self) -> _HeldTracebacks:
        self._logger.addHandler(self)
        self._logger.propagate = False
        return self

    def __exit__(self, *_: object) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate

    def show_held(self) -> None:
        for record in self.held:
            print(logging.Formatter().format(record), file=sys.stderr)


def _plot_quietly(run_dir: Path, reporter: ProgressReporter) -> None:
    try:
        from crucible.plot import plot_run

        plot_run(run_dir)
    except Exception as error:  # a plot must never turn a finished run into a failure
        reporter.print(f"(could not draw loss.png: {type(error).__name__}: {error})")


async def _main_async(
    config: TrainConfig, run_dir: Path, resume: bool, reporter: ProgressReporter, check: RunCheck
) -> RunOutcome:
    return await execute_run(
        config, run_dir, resume=resume, reporter=reporter, dataset=check.splits
    )


def _usage_error(error: BaseException) -> int:
    prefix = "config error" if isinstance(error, ConfigError) else "error"
    print(f"{prefix}: {error}", file=sys.stderr)
    return EXIT_USAGE


def _discard_new_run_dir(run_dir: Path, created: bool) -> None:
    """A run directory this command made, for a run that failed on its input before saving
    anything, goes again: otherwise the corrected rerun would find it "already holds a run"."""
    if created and resume_point_of(run_dir) is None:
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_arguments(argv)
        config, resume = resolve_config(args)
    except UsageError as error:
        print(f"usage error: {error} (see --help)", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as error:
        return _usage_error(error)
    if args.print_config:
        print(json.dumps(config_to_dict(config), indent=2))
        return EXIT_OK
    run_dir = default_run_dir(config)
    try:
        check = check_run(config, run_dir, resume=resume)
    except BAD_INPUT_ERRORS as error:
        return _usage_error(error)
    if args.dry_run:
        return dry_run(config, check)
    created = not run_dir.exists()
    try:
        resume = prepare_run_dir(config, run_dir, resume, ask=_ask)
    except BAD_INPUT_ERRORS as error:
        return _usage_error(error)
    except OSError as error:  # the checks passed, but the disk said otherwise
        _discard_new_run_dir(run_dir, created)
        return _usage_error(ConfigError(f"log_dir {run_dir}: {error.strerror or error}"))
    mode = "quiet" if args.quiet else (args.progress or "auto")
    reporter = ProgressReporter(mode=mode)
    if not args.quiet:
        verb = "resuming" if resume else "starting"
        reporter.print(f"{verb} {config.name} in {run_dir} (backend {config.backend})")
    try:
        with _HeldTracebacks() as logs:
            outcome = anyio.run(_main_async, config, run_dir, resume, reporter, check)
    except KeyboardInterrupt:
        reporter.close()
        _plot_quietly(run_dir, reporter)
        print(f"\naborted; {resume_advice(run_dir)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        reporter.close()
        bad_input = bad_input_in(error)
        if bad_input is not None:  # found only once running (e.g. an unknown base model)
            _discard_new_run_dir(run_dir, created)
            return _usage_error(bad_input)
        _plot_quietly(run_dir, reporter)
        if isinstance(error, StageFailed):
            print(f"error: {error}", file=sys.stderr)
        else:  # not a failure the job knows: a bug, whose traceback helps whoever fixes it
            logs.show_held()
            traceback.print_exc()
        print(f"the run stopped; {resume_advice(run_dir)}", file=sys.stderr)
        return EXIT_FAILED
    reporter.close()
    _plot_quietly(run_dir, reporter)
    _print_summary(outcome, sys.stdout)
    if outcome.status == "stopped":
        print(f"stopped; {resume_advice(run_dir)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
