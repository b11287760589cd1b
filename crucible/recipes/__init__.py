"""Recipes (layer 5): the recipe config, the stage runner, the ``sl_basic`` package
(supervised fine-tuning as a workflow of stages), datasets, renderer, learning-rate schedules,
evaluation, and the run job with its restart policy. See docs/recipes.md.
"""

from crucible.recipes._batches import BatchPlan
from crucible.recipes._config import (
    ConfigError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
)
from crucible.recipes._data import (
    Conversation,
    DatasetError,
    DatasetSplits,
    DatasetStore,
    JsonlDatasetStore,
    LoadedConversations,
    Message,
    TaskDatasetStore,
    read_conversations,
)
from crucible.recipes._eval import EvalResult, Evaluator, SamplingEvaluator
from crucible.recipes._job import (
    RunOutcome,
    StopSwitch,
    default_run_dir,
    execute_run,
    prepare_run_dir,
    resume_advice,
    resume_command,
)
from crucible.recipes._preflight import (
    BAD_INPUT_ERRORS,
    NothingToResume,
    RunCheck,
    RunDirExists,
    bad_input_in,
    check_output_dir,
    check_run,
    resume_point_of,
)
from crucible.recipes._progress import ProgressReporter
from crucible.recipes._render import ChatRenderer, ChatTemplate, RenderedExample, datum_weight
from crucible.recipes._run_dir import RunFiles, run_dir_files
from crucible.recipes._schedule import SCHEDULES, learning_rate
from crucible.recipes._service_import import ImportResult, NotARunDir, import_run, read_run_dir
from crucible.recipes._service_link import (
    SERVICE_URL_ENV,
    ServiceLink,
    TeeMetricsStore,
    service_url_of,
)
from crucible.recipes._session_setup import BackendUnavailable
from crucible.recipes._workflow import (
    Context,
    FunctionStage,
    Loop,
    MissingAdapters,
    Recipe,
    Stage,
    StageFailed,
    StopRequested,
    WorkflowError,
    check_adapters,
    run_workflow,
)

__all__ = [
    "BAD_INPUT_ERRORS",
    "SCHEDULES",
    "SERVICE_URL_ENV",
    "BackendUnavailable",
    "BatchPlan",
    "ChatRenderer",
    "ChatTemplate",
    "ConfigError",
    "Context",
    "Conversation",
    "DatasetError",
    "DatasetSplits",
    "DatasetStore",
    "EvalResult",
    "Evaluator",
    "FunctionStage",
    "ImportResult",
    "JsonlDatasetStore",
    "LoadedConversations",
    "Loop",
    "Message",
    "MissingAdapters",
    "NotARunDir",
    "NothingToResume",
    "ProgressReporter",
    "Recipe",
    "RenderedExample",
    "RunCheck",
    "RunDirExists",
    "RunFiles",
    "RunOutcome",
    "SamplingEvaluator",
    "ServiceLink",
    "Stage",
    "StageFailed",
    "StopRequested",
    "StopSwitch",
    "TaskDatasetStore",
    "TeeMetricsStore",
    "TrainConfig",
    "WorkflowError",
    "bad_input_in",
    "check_adapters",
    "check_output_dir",
    "check_run",
    "config_from_dict",
    "config_to_dict",
    "datum_weight",
    "default_run_dir",
    "execute_run",
    "import_run",
    "learning_rate",
    "load_config",
    "parse_overrides",
    "prepare_run_dir",
    "read_conversations",
    "read_run_dir",
    "resume_advice",
    "resume_command",
    "resume_point_of",
    "run_dir_files",
    "run_workflow",
    "service_url_of",
]
