"""``python -m crucible.run [CONFIG.toml] [key=value ...]``: supervised fine-tuning, the main job.

With no arguments: LoRA fine-tuning of the shipped local base model on generated addition
and word-reversal dialogues, about a minute on two CPU cores; the run directory (default
``runs/<name>-<timestamp>``) then holds config.json, metrics.jsonl, checkpoints.jsonl,
telemetry.jsonl, loss.png and summary.json. Ctrl-C saves a checkpoint and prints the command
that resumes the run; so does a crash. See docs/quickstart.md and docs/recipes.md.

Exit status: 0 done, 1 failed, 2 bad configuration or usage, 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import anyio
import attrs

from crucible.actors import Runtime, open_runtime
from crucible.config import ConfigError, TrainConfig, config_to_dict, load_config
from crucible.metrics import JsonlMetricsStore, MetricRecord
from crucible.recipes import (
    SL_BASIC,
    BackendUnavailable,
    BatchPlan,
    Context,
    DatasetError,
    JsonlDatasetStore,
    MissingAdapters,
    ProgressReporter,
    RunFiles,
    SLState,
    StageFailed,
    StopRequested,
    TaskDatasetStore,
    check_adapters,
    open_training_session,
    run_dir_files,
    run_workflow,
)
from crucible.recipes._session_setup import (
    check_backend,
    import_initial_weights,
    latest_state_checkpoint,
    source_run_id,
)
from crucible.recipes._tasks import TaskName
from crucible.telemetry import JsonlHandler, execute
from crucible.training import BackendCrashed, BackendOpFailed, ModelRegistryClient

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class TooManyRestarts(RuntimeError):
    """The backend kept failing: more restarts than ``max_restarts``."""


class RunDirExists(Exception):
    """The run directory is in use and behavior_if_exists says not to touch it."""


@attrs.define
class RunOutcome:
    status: str  # "completed" | "stopped" | "failed"
    run_dir: Path
    run_id: str
    restarts: int = 0
    resumed_from: str | None = None
    model_id: int | None = None
    sampler_path: str | None = None
    skipped_lines: int = 0
    error: str | None = None
    summary: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class StopSwitch:
    """Set by the SIGINT watcher; read by the workflow's loops through the context."""

    requested: bool = False
    ctx: Context[Any, Any] | None = None

    def request(self) -> None:
        self.requested = True
        if self.ctx is not None:
            self.ctx.stop_requested = True


def default_run_dir(config: TrainConfig) -> Path:
    if config.log_dir is not None:
        return Path(config.log_dir)
    return Path("runs") / f"{config.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def resume_command(run_dir: Path) -> str:
    return f"python -m crucible.run --resume {shlex.quote(str(run_dir))}"


def _dataset_store(config: TrainConfig) -> TaskDatasetStore | JsonlDatasetStore:
    if config.dataset == "default":
        tasks = cast("tuple[TaskName, ...]", config.tasks)  # checked by TrainConfig
        return TaskDatasetStore(tasks=tasks, shuffle_seed=config.seed)
    return JsonlDatasetStore(
        config.dataset,
        config.test_dataset,
        test_fraction=config.test_fraction,
        skip_bad_lines=config.skip_bad_lines,
        seed=config.seed,
    )


def _restartable(error: BaseException) -> bool:
    """A lost or failed backend, or one that stopped answering: restart from a checkpoint."""
    stack, seen = [error], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BackendOpFailed | BackendCrashed | TimeoutError):
            return True
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return leaves


async def _watch_interrupts(switch: StopSwitch, reporter: ProgressReporter) -> None:
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            if switch.requested:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
            reporter.print("Ctrl-C: finishing this step and saving a checkpoint (again to abort)")
            switch.request()


async def execute_run(
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    reporter: ProgressReporter,
    handle_signals: bool = True,
    stop_switch: StopSwitch | None = None,
) -> RunOutcome:
    """Run sl_basic in ``run_dir`` (created and holding config.json), restarting from the last
    checkpoint when the backend fails, up to ``max_restarts`` times.

    ``stop_switch.request()`` asks the run to stop as Ctrl-C does (SIGINT is watched unless
    ``handle_signals`` is False)."""
    run_id = run_dir.name
    files = run_dir_files(run_dir)
    outcome = RunOutcome("failed", run_dir, run_id)
    switch = stop_switch if stop_switch is not None else StopSwitch()
    started = time.perf_counter()
    files.repair_tails()
    telemetry = JsonlHandler(files.telemetry, handler_id=f"crucible.run.telemetry:{run_dir}")
    try:
        async with open_runtime() as rt, anyio.create_task_group() as tasks:
            if handle_signals:
                tasks.start_soon(_watch_interrupts, switch, reporter)
            try:
                await _run_incarnations(config, files, run_id, rt, resume, switch, outcome)
            finally:
                tasks.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # task groups wrap errors: report the one that happened
        leaves = _leaves(group)
        error = leaves[0] if len(leaves) == 1 else group
        if outcome.error is None and isinstance(error, Exception):
            outcome.error = f"{type(error).__name__}: {error}"
        if error is group:
            raise
        raise error from None
    finally:
        telemetry.close()
        outcome.summary = await _write_summary(
            config, files, outcome, time.perf_counter() - started
        )
        _plot_quietly(files.run_dir, reporter)
    return outcome


async def _run_incarnations(
    config: TrainConfig,
    files: RunFiles,
    run_id: str,
    rt: Runtime,
    resume: bool,
    switch: StopSwitch,
    outcome: RunOutcome,
) -> None:
    init_from: str | None = None
    parent: int | None = None
    while True:
        resuming = resume or outcome.restarts > 0
        recorded: frozenset[tuple[str, int]] = frozenset()
        if resuming:
            point = latest_state_checkpoint(files.run_dir)
            recorded = files.truncate_metrics(point.batch if point is not None else -1)
        store = JsonlMetricsStore(files.metrics)
        try:
            async with open_training_session(
                rt, config, files.run_dir, run_id, incarnation=outcome.restarts
            ) as handles:
                if config.init_from is not None and init_from is None:
                    source = Path(config.init_from)
                    init_from = import_initial_weights(source, files.run_dir, run_id)
                    parent = await _parent_model(handles.model_registry, source)
                state = SLState(
                    run_id=run_id,
                    resume=resuming,
                    init_from=init_from,
                    parent_model_id=parent,
                    recorded_at_resume=recorded,
                )
                ctx: Context[TrainConfig, SLState] = Context(
                    config,
                    {
                        "training_client": handles.training_client,
                        "dataset_store": _dataset_store(config),
                        "metrics_store": store,
                        "checkpoint_store": handles.checkpoint_store,
                        "model_registry": handles.model_registry,
                    },
                    state,
                    stop_requested=switch.requested,
                )
                switch.ctx = ctx
                try:
                    await run_workflow(SL_BASIC, ctx)
                    outcome.status = "completed"
                except StopRequested:
                    outcome.status = "stopped"
                finally:
                    switch.ctx = None
                    outcome.restarts += handles.restarts()
                    outcome.resumed_from = outcome.resumed_from or state.resumed_from
                    outcome.model_id = state.model_id
                    outcome.sampler_path = state.sampler_path
                    outcome.skipped_lines = state.skipped_lines
                return
        except StageFailed as failure:
            if not _restartable(failure):
                outcome.error = str(failure)
                raise
            if outcome.restarts >= config.max_restarts:
                outcome.error = f"gave up after {outcome.restarts} restarts: {failure}"
                raise TooManyRestarts(outcome.error) from failure
            outcome.restarts += 1
            execute(
                "crucible_train.restart",
                {"restarts": outcome.restarts},
                {"run_id": run_id, "stage": failure.stage, "reason": str(failure.error)},
            )
        finally:
            await store.close()


async def _parent_model(registry: ModelRegistryClient, source: Path) -> int | None:
    run_id = source_run_id(source)
    if run_id is None:
        return None
    found = await registry.find(tags=(f"run:{run_id}",))
    return found[-1].id if found else None


async def _write_summary(
    config: TrainConfig, files: RunFiles, outcome: RunOutcome, wall_time_s: float
) -> dict[str, Any]:
    records: list[MetricRecord] = []
    if files.metrics.exists():
        store = JsonlMetricsStore(files.metrics)
        try:
            records = await store.read(outcome.run_id)
        finally:
            await store.close()
    series: dict[str, list[MetricRecord]] = {}
    for record in records:
        series.setdefault(record.metric, []).append(record)

    def first(metric: str) -> float | None:
        values = series.get(metric)
        return values[0].value if values else None

    def last(metric: str) -> float | None:
        values = series.get(metric)
        return values[-1].value if values else None

    steps = max((r.step for r in series.get("train/loss", []) if r.step is not None), default=0)
    summary: dict[str, Any] = {
        "run_id": outcome.run_id,
        "status": outcome.status,
        "steps": steps,
        "wall_time_s": round(wall_time_s, 2),
        "train_loss_first": first("train/loss"),
        "train_loss_last": last("train/loss"),
        "eval_nll_first": first("eval/nll"),
        "eval_nll_last": last("eval/nll"),
        "eval_accuracy_first": first("eval/accuracy"),
        "eval_accuracy_last": last("eval/accuracy"),
        "eval_accuracy_by_task": {
            name.removeprefix("eval/accuracy/"): last(name)
            for name in sorted(series)
            if name.startswith("eval/accuracy/")
        },
        "restarts": outcome.restarts,
        "resumed_from": outcome.resumed_from,
        "model_id": outcome.model_id,
        "sampler_path": outcome.sampler_path,
        "skipped_lines": outcome.skipped_lines,
        "error": outcome.error,
        "backend": config.backend,
        "inject_faults": config.inject_faults,
    }
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in summary.items()
    }
    files.write_summary(clean)
    return clean


def _plot_quietly(run_dir: Path, reporter: ProgressReporter) -> None:
    try:
        from crucible.plot import plot_run

        plot_run(run_dir)
    except Exception as error:  # a plot must never turn a finished run into a failure
        reporter.print(f"(could not draw loss.png: {type(error).__name__}: {error})")


# ---- the command line --------------------------------------------------------------------


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


def prepare_run_dir(config: TrainConfig, run_dir: Path, resume: bool) -> bool:
    """Apply behavior_if_exists; returns whether the run resumes. Writes config.json."""
    files = run_dir_files(run_dir)
    if resume and not files.used():
        raise RunDirExists(f"--resume {run_dir}: there is no run to resume there")
    if files.used() and not resume:
        behavior: str = config.behavior_if_exists
        if behavior == "ask":
            behavior = _ask(run_dir)
        if behavior == "raise":
            raise RunDirExists(
                f"{run_dir} already holds a run; resume it with {resume_command(run_dir)}, "
                "or set behavior_if_exists=delete (or another log_dir)"
            )
        if behavior == "delete":
            shutil.rmtree(run_dir)
        resume = behavior == "resume"
    run_dir.mkdir(parents=True, exist_ok=True)
    files.write_config(config_to_dict(attrs.evolve(config, log_dir=str(run_dir))))
    return resume


def _ask(run_dir: Path) -> str:
    if not sys.stdin.isatty():
        return "raise"
    answer = input(f"{run_dir} already holds a run: [r]esume, [d]elete it, or [a]bort? ")
    return {"r": "resume", "d": "delete"}.get(answer.strip().lower()[:1], "raise")


def dry_run(config: TrainConfig) -> int:
    """Check everything that can be checked without training: the config, the backend's
    prerequisites, the dataset (every line), the batch plan and the recipe's adapters."""
    try:
        check_backend(config)
        store = _dataset_store(config)
        splits = store.load_sync()
        plan = BatchPlan(len(splits.train), config.batch_size, config.epochs, config.max_steps)
        adapters = {"training_client": config.backend, "dataset_store": store}
        check_adapters(SL_BASIC, adapters)
    except (BackendUnavailable, DatasetError, MissingAdapters, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    skipped = f", {splits.skipped_lines} bad lines skipped" if splits.skipped_lines else ""
    print(
        f"config ok: {len(splits.train)} training and {len(splits.test)} test conversations"
        f"{skipped}; {plan.total_steps} steps of {config.batch_size} "
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
        check_backend(config)
        resume = prepare_run_dir(config, run_dir, resume)
    except (RunDirExists, BackendUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    mode = "quiet" if args.quiet else args.progress
    reporter = ProgressReporter(mode=mode)
    if not args.quiet:
        verb = "resuming" if resume else "starting"
        reporter.print(f"{verb} {config.name} in {run_dir} (backend {config.backend})")
    try:
        outcome = anyio.run(_main_async, config, run_dir, resume, reporter)
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


async def _main_async(
    config: TrainConfig, run_dir: Path, resume: bool, reporter: ProgressReporter
) -> RunOutcome:
    return await execute_run(config, run_dir, resume=resume, reporter=reporter)


if __name__ == "__main__":
    sys.exit(main())
