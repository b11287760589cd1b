"""The run job behind ``python -m crucible.run``: sl_basic in a run directory, on the
supervised training tree, with a summary at the end.

Restarts have one owner: the training tree's supervisor (see ``open_training_session``). The
job runs the workflow once; when the tree gives up, the run fails and can be resumed.
"""

from __future__ import annotations

import logging
import math
import shlex
import shutil
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import attrs

from crucible._fs import remove_stale_temporaries
from crucible.actors import Runtime, open_runtime
from crucible.metrics import JsonlMetricsStore
from crucible.recipes._config import TrainConfig, config_to_dict
from crucible.recipes._data import DatasetSplits, DatasetStore
from crucible.recipes._preflight import (
    PreloadedDatasetStore,
    RunDirExists,
    check_resumable,
    checkpoint_verifier,
    dataset_store,
    resume_point_of,
)
from crucible.recipes._progress import ProgressReporter
from crucible.recipes._run_dir import RunFiles, run_dir_files
from crucible.recipes._service_link import (
    ReportedCheckpoints,
    ServiceLink,
    TeeMetricsStore,
    service_url_of,
)
from crucible.recipes._session_setup import (
    check_backend,
    import_initial_weights,
    open_training_session,
    source_run_id,
)
from crucible.recipes._workflow import (
    Context,
    StageFailed,
    StopRequested,
    run_workflow,
)
from crucible.recipes.sl_basic import SL_BASIC, MetricHistory, SLState, summary_metrics
from crucible.telemetry import JsonlHandler
from crucible.training import ModelRegistryClient
from crucible.training.checkpoints import prepare_resume


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
    stale_temporaries_removed: int = 0
    error: str | None = None
    summary: dict[str, Any] = attrs.field(factory=dict)
    # requests for the metric service still in the run's buffer at the end (None: no service)
    service_buffered: int | None = None


@attrs.define
class StopSwitch:
    """Set by the SIGINT watcher; read by the workflow's loops through the context."""

    requested: bool = False
    ctx: Context[Any, Any] | None = None

    def request(self) -> None:
        self.requested = True
        if self.ctx is not None:
            self.ctx.stop_requested = True


_log = logging.getLogger("crucible.recipes.service")


def default_run_dir(config: TrainConfig) -> Path:
    if config.log_dir is not None:
        return Path(config.log_dir)
    return Path("runs") / f"{config.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def resume_command(run_dir: Path) -> str:
    return f"python -m crucible.run --resume {shlex.quote(str(run_dir))}"


def resume_advice(run_dir: Path) -> str:
    """What to tell a user whose run stopped: the resume command when there is a checkpoint to
    continue from, else that a resume cannot help."""
    if resume_point_of(run_dir) is not None:
        return f"resume with: {resume_command(run_dir)}"
    return (
        "there is no checkpoint to resume from; run it again with "
        f"behavior_if_exists=delete log_dir={shlex.quote(str(run_dir))}"
    )


def _no_one_to_ask(_run_dir: Path) -> str:
    return "raise"


def prepare_run_dir(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    *,
    ask: Callable[[Path], str] = _no_one_to_ask,
) -> bool:
    """Check the backend, apply behavior_if_exists (``ask`` answers "resume", "delete" or
    "raise" for ``ask``); returns whether the run resumes. Writes config.json.

    Raises BackendUnavailable, NothingToResume or RunDirExists before anything is written.
    (``check_run`` checks more, the dataset included: call it first.)"""
    check_backend(config)
    files = run_dir_files(run_dir)
    if resume:
        check_resumable(run_dir)
    if files.used() and not resume:
        behavior: str = config.behavior_if_exists
        if behavior == "ask":
            behavior = ask(run_dir)
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
    dataset: DatasetSplits | None = None,
) -> RunOutcome:
    """Run sl_basic in ``run_dir`` (created and holding config.json) and write summary.json.

    ``stop_switch.request()`` asks the run to stop as Ctrl-C does (SIGINT is watched unless
    ``handle_signals`` is False). ``dataset``: the splits ``check_run`` loaded (else the
    run loads them). A resumed run first removes the temporary files that a killed write left.
    """
    files = run_dir_files(run_dir)
    stale = remove_stale_temporaries(run_dir) if resume else []
    if stale:
        reporter.print(f"removed {len(stale)} stale temporary files left by a killed run")
    state = SLState(run_id=run_dir.name, resume=resume)
    outcome = RunOutcome("failed", run_dir, state.run_id, stale_temporaries_removed=len(stale))
    switch = stop_switch if stop_switch is not None else StopSwitch()
    started = time.perf_counter()
    files.repair_tails()
    telemetry = JsonlHandler(files.telemetry, handler_id=f"crucible.run.telemetry:{run_dir}")
    url = service_url_of(config)
    link = None
    if url is not None:
        link = ServiceLink(url, run_dir, state.run_id, wait_s=config.service_wait_s)
    try:
        async with open_runtime() as rt, anyio.create_task_group() as tasks:
            if handle_signals:
                tasks.start_soon(_watch_interrupts, switch, reporter)
            if link is not None:
                tasks.start_soon(link.keep_alive)
            try:
                store = dataset_store(config) if dataset is None else PreloadedDatasetStore(dataset)
                await _run_sl_basic(
                    config, files, rt, state, switch, outcome, store, reporter, link
                )
            finally:
                tasks.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # task groups wrap errors: report the one that happened
        leaves = _leaves(group)
        error = leaves[0] if len(leaves) == 1 else group
        if outcome.error is None and isinstance(error, Exception):
            outcome.error = f"{type(error).__name__}: {error}"
        if error is group:
            raise
        # Without the group as its context, but with its own cause (what bad_input_in reads).
        raise error from error.__cause__
    finally:
        telemetry.close()
        outcome.resumed_from = state.resumed_from
        outcome.model_id = state.model_id
        outcome.sampler_path = state.sampler_path
        outcome.skipped_lines = state.skipped_lines
        outcome.summary = _summary(config, outcome, state.history, time.perf_counter() - started)
        files.write_summary(outcome.summary)
        if link is not None:
            outcome.service_buffered = await _finish_link(link, outcome, run_dir)
    return outcome


async def _finish_link(link: ServiceLink, outcome: RunOutcome, run_dir: Path) -> int:
    """End the run's record in the service, waiting at most ``service_wait_s`` for it to
    take what is buffered; say so when some of it is still waiting."""
    buffered = await link.finish(outcome.status, outcome.summary, outcome.error)
    if buffered:
        _log.warning(
            "the metric service at %s has not taken %d requests yet; they wait in %s and "
            "are sent by `%s`, or import the run with `python -m crucible.serve import %s`",
            link.url,
            buffered,
            link.buffer_dir,
            resume_command(run_dir),
            shlex.quote(str(run_dir)),
        )
    return buffered


async def _run_sl_basic(
    config: TrainConfig,
    files: RunFiles,
    rt: Runtime,
    state: SLState,
    switch: StopSwitch,
    outcome: RunOutcome,
    dataset: DatasetStore,
    reporter: ProgressReporter,
    link: ServiceLink | None = None,
) -> None:
    store = JsonlMetricsStore(files.metrics)
    try:
        if state.resume:
            # Steps after the checkpoint the run resumes from are trained (and recorded) again.
            # A damaged checkpoint is passed over for the previous good one; the log lines of
            # the steps after it go, as those steps are trained and saved again.
            resume = prepare_resume(files.run_dir, checkpoint_verifier(files.run_dir))
            for damaged in resume.damaged:
                reporter.print(
                    f"checkpoint {damaged.name} is damaged, passed over: {damaged.reason}"
                )
            point = resume.record
            truncation = await store.truncate_after(point.batch if point else -1)
            state.recorded_at_resume = truncation.at_step
        # The summary covers the whole run: what earlier runs in this directory recorded too.
        recorded = await store.read(state.run_id)
        state.history = MetricHistory.of(recorded)
        metrics: JsonlMetricsStore | TeeMetricsStore = store
        if link is not None:
            link.start(config, resume=state.resume, records=recorded)
            metrics = TeeMetricsStore(store, link.store)
        async with open_training_session(rt, config, files.run_dir, state.run_id) as handles:
            checkpoints: Any = handles.checkpoint_store
            if link is not None:
                if state.resume:  # the service's copy was replaced: its checkpoints again
                    link.checkpoints(await checkpoints.list())
                checkpoints = ReportedCheckpoints(checkpoints, link)
            try:
                if config.init_from is not None:
                    source = Path(config.init_from)
                    state.init_from = import_initial_weights(source, files.run_dir, state.run_id)
                    state.parent_model_id = await _parent_model(handles.model_registry, source)
                ctx: Context[TrainConfig, SLState] = Context(
                    config,
                    {
                        "training_client": handles.training_client,
                        "dataset_store": dataset,
                        "metrics_store": metrics,
                        "checkpoint_store": checkpoints,
                        "model_registry": handles.model_registry,
                    },
                    state,
                    stop_requested=switch.requested,
                )
                switch.ctx = ctx
                await run_workflow(SL_BASIC, ctx)
                outcome.status = "completed"
                if link is not None:
                    await _report_models(link, handles.model_registry, state)
            except StopRequested:
                outcome.status = "stopped"
            except StageFailed as failure:
                outcome.error = str(failure)
                raise
            finally:
                switch.ctx = None
                outcome.restarts = handles.restarts()
    finally:
        await store.close()


async def _report_models(link: ServiceLink, registry: ModelRegistryClient, state: SLState) -> None:
    """Send the model versions this run registered (a run continued past its end has
    several), and the one it stands for (``state.model_id``)."""
    found = await registry.find(tags=(f"run:{state.run_id}",))
    if state.model_id is not None and all(record.id != state.model_id for record in found):
        found.append(await registry.get(state.model_id))
    for record in found:
        link.model_version(record)


async def _parent_model(registry: ModelRegistryClient, source: Path) -> int | None:
    run_id = source_run_id(source)
    if run_id is None:
        return None
    found = await registry.find(tags=(f"run:{run_id}",))
    return found[-1].id if found else None


def _summary(
    config: TrainConfig, outcome: RunOutcome, history: MetricHistory, wall_time_s: float
) -> dict[str, Any]:
    metrics = summary_metrics(history)
    summary: dict[str, Any] = {
        "run_id": outcome.run_id,
        "status": outcome.status,
        "steps": metrics.pop("steps"),
        "wall_time_s": round(wall_time_s, 2),
        **metrics,
        "restarts": outcome.restarts,
        "resumed_from": outcome.resumed_from,
        "model_id": outcome.model_id,
        "sampler_path": outcome.sampler_path,
        "skipped_lines": outcome.skipped_lines,
        "error": outcome.error,
        "backend": config.backend,
        "inject_faults": config.inject_faults,
    }
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in summary.items()
    }
