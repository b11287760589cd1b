"""Checks before a run directory is made: everything that bad input can get wrong.

``check_run`` reads the whole dataset, checks the backend's prerequisites, ``init_from``, the
output directory (and the registry's) and, for ``--resume``, that there is something to resume,
all without creating anything. So a mistake is reported before a run directory exists, and the
corrected rerun is not refused for a directory that the failed one left behind.

``bad_input_in(error)`` tells a failure caused by bad input (exit 2, one line, no resume advice)
from a real failure (exit 1) when a mistake is found only once the run has started, such as a
base model that the backend does not know.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import cast

import attrs

from crucible.recipes._batches import BatchPlan
from crucible.recipes._config import ConfigError, TrainConfig
from crucible.recipes._data import DatasetError, DatasetSplits, JsonlDatasetStore, TaskDatasetStore
from crucible.recipes._run_dir import run_dir_files
from crucible.recipes._service_link import service_url_of
from crucible.recipes._session_setup import (
    BackendUnavailable,
    check_backend,
    init_from_state_file,
    registry_path,
)
from crucible.recipes._tasks import TaskName
from crucible.recipes._workflow import MissingAdapters, StageFailed, check_adapters
from crucible.recipes.sl_basic import SL_BASIC
from crucible.training import (
    CheckpointRecord,
    InvalidCheckpointPath,
    InvalidLoraTarget,
    MissingChatTemplate,
    ModelTooLarge,
    UnknownBaseModel,
)
from crucible.training.checkpoints import Verify, latest_verified_state_checkpoint


class RunDirExists(Exception):
    """The run directory is in use and behavior_if_exists says not to touch it."""


class NothingToResume(Exception):
    """``--resume`` names a directory whose run cannot be continued."""


#: Errors that mean "the input is wrong": fixing the input, not resuming, is what helps.
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DatasetError,
    BackendUnavailable,
    MissingAdapters,
    RunDirExists,
    NothingToResume,
    UnknownBaseModel,
    InvalidCheckpointPath,
    InvalidLoraTarget,
    MissingChatTemplate,
    ModelTooLarge,
)


@attrs.frozen
class RunCheck:
    """What the checks found: the dataset's size, the batch plan, and the loaded dataset (so
    the run does not read it twice)."""

    train_examples: int
    test_examples: int
    skipped_lines: int
    plan: BatchPlan
    splits: DatasetSplits | None = attrs.field(default=None, repr=False, eq=False)


@attrs.frozen
class PreloadedDatasetStore:
    """The dataset port over splits that ``check_run`` already read."""

    splits: DatasetSplits

    async def load(self) -> DatasetSplits:
        return self.splits


def dataset_store(config: TrainConfig) -> TaskDatasetStore | JsonlDatasetStore:
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


def check_run(
    config: TrainConfig, run_dir: Path | None = None, *, resume: bool = False
) -> RunCheck:
    """Check everything that can be checked without training: the backend's prerequisites,
    ``init_from``, the output directories (when ``run_dir`` is given), what ``resume`` would
    continue, the dataset (every line), the batch plan and the recipe's adapters.

    Creates nothing. Raises one of ``BAD_INPUT_ERRORS`` naming the problem."""
    check_backend(config)
    service_url_of(config)  # $CRUCIBLE_SERVICE_URL is checked here, before anything is made
    if run_dir is not None:
        check_output_dir(run_dir, "log_dir")
        if resume:
            check_resumable(run_dir)
        registry = registry_path(config, run_dir)
        if registry.is_dir():
            raise ConfigError(f"registry_path {registry} is a directory, not a database file")
        check_output_dir(registry.parent, "registry_path's folder")
    if config.init_from is not None:
        check_init_from(Path(config.init_from))
    store = dataset_store(config)
    splits = store.load_sync()
    plan = BatchPlan(len(splits.train), config.batch_size, config.epochs, config.max_steps)
    check_adapters(SL_BASIC, {"training_client": config.backend, "dataset_store": store})
    return RunCheck(len(splits.train), len(splits.test), splits.skipped_lines, plan, splits)


def _nearest_existing(path: Path) -> Path:
    current = path
    while True:
        try:
            if os.path.lexists(current):
                return current
        except OSError:
            pass
        if current.parent == current:
            return current
        current = current.parent


def check_output_dir(directory: Path, what: str) -> None:
    """``directory`` exists as a directory we can write in, or can be made: nothing on its way
    is a file, and its nearest existing ancestor takes a new entry (tried with a probe folder
    that is removed at once: permission bits do not tell, for root or a read-only mount)."""
    existing = _nearest_existing(directory)
    if not existing.is_dir():
        where = "is" if existing == directory else f"is below {existing}, which is"
        raise ConfigError(f"{what} {directory} {where} a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".crucible-write-check-", dir=existing))
    except OSError as error:
        raise ConfigError(
            f"{what} {directory}: cannot write in {existing} ({error.strerror})"
        ) from None


def resume_point_of(run_dir: Path) -> CheckpointRecord | None:
    """The checkpoint a resume of ``run_dir`` would load (the newest whose files verify), or
    None.

    The one place that decides it for the advice and for ``--resume``'s check; the resume
    itself goes through ``prepare_resume`` with the same verifier."""
    return latest_verified_state_checkpoint(run_dir, checkpoint_verifier(run_dir)).record


def checkpoint_verifier(run_dir: Path) -> Verify:
    """How a resume checks a checkpoint's files: a local checkpoint against the sha256 sealed
    into it; a remote backend's checkpoints (``tinker://``) are the service's to check."""
    root = run_dir / "checkpoints"

    def verify(path: str) -> None:
        from crucible.training.backends.local import CheckpointPath

        try:
            local = CheckpointPath.parse(path)
        except InvalidCheckpointPath:
            return
        local.verify(root)

    return verify


def check_resumable(run_dir: Path) -> None:
    """A run that was killed before its first checkpoint starts over in place; a run that
    ended (it wrote summary.json) without a checkpoint to load has nothing to continue."""
    files = run_dir_files(run_dir)
    if not files.used() or not files.config.exists():
        raise NothingToResume(f"--resume {run_dir}: there is no run to resume there")
    if files.summary.exists() and resume_point_of(run_dir) is None:
        raise NothingToResume(
            f"--resume {run_dir}: the run ended without a checkpoint to continue from; "
            "start it again (behavior_if_exists=delete)"
        )


def check_init_from(source: Path) -> None:
    """``init_from`` names another local run directory with a state checkpoint to start from."""
    init_from_state_file(source)


def bad_input_in(error: BaseException) -> BaseException | None:
    """The bad-input error behind ``error`` (through causes, failed stages and exception
    groups), or None when the failure is not the input's fault."""
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BAD_INPUT_ERRORS):
            return current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        if isinstance(current, StageFailed):
            pending.append(current.error)
        if current.__cause__ is not None:
            pending.append(current.__cause__)
    return None
