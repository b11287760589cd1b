"""Runs as records: what a run is, how it is created, changed, filtered, sorted and paged.

Every store that keeps runs (memory, SQLite, PostgreSQL) implements `RunStore` with these
types and passes the same tests; the SQL stores answer `list_runs` in SQL (`_runs_sql`), the
memory store in Python (`_runbook`), with identical answers.

A run's `status` is stored as running, completed or failed; a running run whose heartbeat
(a `heartbeat` call, or points arriving) is older than `stale_after` seconds reads as
`crashed`, computed at read time, so a process that died without a word is seen as such.
"""

from __future__ import annotations

import base64
import math
import re
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

import attrs
import msgspec

from ._errors import InvalidRecord, MetricsError
from ._names import METRIC_SHAPE, check_run_id

__all__ = [
    "DEFAULT_STALE_AFTER",
    "CheckpointRef",
    "ConfigFilter",
    "InvalidRun",
    "MetricRange",
    "MetricStat",
    "ModelVersionRef",
    "RunNotFound",
    "RunPage",
    "RunQuery",
    "RunRecord",
    "RunSpec",
    "RunStore",
    "RunUpdate",
]

RunStatus = Literal["running", "completed", "failed", "crashed"]
SettableStatus = Literal["running", "completed", "failed"]
Aggregate = Literal["last", "min", "max", "count"]
SortField = Literal["started_at", "name", "metric"]
AGGREGATES: tuple[str, ...] = ("last", "min", "max", "count")
DEFAULT_STALE_AFTER = 300.0  # seconds without a heartbeat before a running run is crashed
MAX_TAGS = 64
_TAG = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
_CONFIG_KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_TEXT_MAX = 256
_NOTES_MAX = 65536
UNSET: Any = msgspec.UNSET


class InvalidRun(MetricsError, ValueError):
    """A run (or a run query) failed validation; nothing was stored. `field` names it."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"invalid {field!r}: {problem}")


class RunNotFound(MetricsError, LookupError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run {run_id!r}")


class CheckpointRef(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A checkpoint of a run (tinker-cookbook's checkpoints.jsonl fields); unique by name."""

    name: str
    # JSON has one number type: a whole float (7.0) is the step 7, as for metric points.
    step: int | float | None = None
    state_path: str | None = None
    sampler_path: str | None = None
    final: bool = False
    metrics: dict[str, float] = {}
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        step = self.step
        if type(step) is float:
            if not step.is_integer():
                raise ValueError(f"step must be a whole number, got {step!r}")
            step = int(step)
            msgspec.structs.force_setattr(self, "step", step)
        if step is not None and not 0 <= step <= 2**63 - 1:
            raise ValueError(f"step must be between 0 and 2**63-1, got {step}")


class ModelVersionRef(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A model version registered from a run; unique by (name, version)."""

    name: str
    version: str
    stage: str | None = None
    checkpoint: str | None = None
    created_at: datetime | None = None


class MetricStat(msgspec.Struct, frozen=True, kw_only=True):
    """A metric's summary in one run, kept as points arrive: `last` is the value of the last
    point in read order (step, then time, then arrival; step-less points last)."""

    count: int
    min: float
    max: float
    last: float
    last_step: int | None
    last_timestamp: datetime


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    project: str | None
    group: str | None
    tags: list[str]
    notes: str
    config: dict[str, Any]
    status: RunStatus
    started_at: datetime
    ended_at: datetime | None
    heartbeat_at: datetime
    host: str | None
    git_commit: str | None
    summary: dict[str, float]  # values the client set (final eval scores...)
    metrics: dict[str, MetricStat]  # kept on ingest, per metric name
    checkpoints: list[CheckpointRef]
    model_versions: list[ModelVersionRef]


class RunSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What `create_run` takes. Creating a run that exists resumes it: the given fields are
    set, its status is running again, and its start time and metrics are kept."""

    id: str
    name: str | None = None
    project: str | None = None
    group: str | None = None
    tags: list[str] = []
    notes: str = ""
    config: dict[str, Any] = {}
    started_at: datetime | None = None
    host: str | None = None
    git_commit: str | None = None


class RunUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What `update_run` takes; fields left out are unchanged. `summary` is merged into the
    run's summary; `checkpoints`/`model_versions` are added (replacing one of the same name).
    Setting status completed or failed without `ended_at` ends the run now."""

    status: SettableStatus | msgspec.UnsetType = UNSET
    tags: list[str] | msgspec.UnsetType = UNSET
    notes: str | msgspec.UnsetType = UNSET
    summary: dict[str, float] | msgspec.UnsetType = UNSET
    ended_at: datetime | msgspec.UnsetType | None = UNSET
    checkpoints: list[CheckpointRef] = []
    model_versions: list[ModelVersionRef] = []


@attrs.frozen
class ConfigFilter:
    """Runs whose config holds `value` (a JSON scalar) at `path` (keys from the root)."""

    path: tuple[str, ...]
    value: str | int | float | bool | None


@attrs.frozen
class MetricRange:
    """Runs whose metric `metric` has `aggregate` within [low, high] (None: unbounded)."""

    metric: str
    aggregate: str = "last"
    low: float | None = None
    high: float | None = None


@attrs.frozen
class RunQuery:
    """A listing: filters (all must hold), one sort, and a page after `cursor`.

    Sort by `started_at` (default newest first), `name`, or a metric's aggregate
    (`sort_metric`, `sort_aggregate`; runs without the metric come last either way); ties
    are broken by id in the same direction. `now` and `stale_after` decide which running
    runs read as crashed.
    """

    status: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    project: str | None = None
    group: str | None = None
    config: tuple[ConfigFilter, ...] = ()
    metrics: tuple[MetricRange, ...] = ()
    sort: str = "started_at"
    sort_metric: str | None = None
    sort_aggregate: str = "last"
    descending: bool | None = None  # None: newest first for started_at, else ascending
    limit: int = 100
    cursor: str | None = None
    now: datetime | None = None
    stale_after: float = DEFAULT_STALE_AFTER

    @property
    def desc(self) -> bool:
        return self.sort == "started_at" if self.descending is None else self.descending

    @property
    def sort_token(self) -> str:
        if self.sort == "metric":
            return f"metric:{self.sort_metric}@{self.sort_aggregate}"
        return self.sort

    def stale_before(self) -> datetime:
        return stale_cutoff(self.now, self.stale_after)


class RunPage(msgspec.Struct, frozen=True):
    runs: list[RunRecord]
    next_cursor: str | None


@runtime_checkable
class RunStore(Protocol):
    """Runs as records beside the metric points (memory, SQLite and PostgreSQL stores)."""

    async def create_run(self, spec: RunSpec) -> tuple[RunRecord, bool]:
        """The run as stored, and whether it was new (False: it existed and was resumed)."""
        ...

    async def update_run(self, run_id: str, update: RunUpdate) -> RunRecord: ...

    async def heartbeat(self, run_id: str, at: datetime | None = None) -> None: ...

    async def get_run(
        self,
        run_id: str,
        *,
        now: datetime | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> RunRecord: ...

    async def list_runs(self, query: RunQuery) -> RunPage: ...


# -- validation -----------------------------------------------------------------------------


def stale_cutoff(now: datetime | None, stale_after: float) -> datetime:
    from datetime import timedelta

    return (now or datetime.now(UTC)) - timedelta(seconds=stale_after)


def effective_status(stored: str, heartbeat_at: datetime, cutoff: datetime) -> RunStatus:
    if stored == "running" and heartbeat_at < cutoff:
        return "crashed"
    return stored  # type: ignore[return-value]


def _text(field: str, value: object, limit: int = _TEXT_MAX) -> None:
    if value is None:
        return
    if type(value) is not str or len(value) > limit or "\x00" in value:
        raise InvalidRun(field, f"must be text of at most {limit} characters without NUL")


def check_tags(tags: object) -> list[str]:
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise InvalidRun("tags", f"must be a list of at most {MAX_TAGS} tags")
    for tag in tags:
        if type(tag) is not str or not _TAG.fullmatch(tag):
            raise InvalidRun("tags", f"each tag is 1-64 printable characters, got {tag!r}"[:120])
    return list(dict.fromkeys(tags))  # duplicates once, first order kept


def _aware(field: str, moment: object) -> datetime | None:
    if moment is None:
        return None
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise InvalidRun(field, "must be a timezone-aware datetime")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidRun(field, "out of range once converted to UTC") from None


MAX_CONFIG_DEPTH = 32


def _json_clean(field: str, value: object) -> None:
    """JSON of at most MAX_CONFIG_DEPTH levels, finite numbers, no NUL (checked without
    recursion, so no depth can overflow the stack)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_CONFIG_DEPTH:
                raise InvalidRun(field, f"nested more than {MAX_CONFIG_DEPTH} levels deep")
            if isinstance(item, dict):
                for key in item:
                    if type(key) is not str or "\x00" in key:
                        raise InvalidRun(field, "keys must be strings without NUL")
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise InvalidRun(field, "must not contain NUL characters")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidRun(field, "numbers must be finite")
        elif item is not None and not isinstance(item, int):
            raise InvalidRun(field, f"must be JSON, got a {type(item).__name__}")


def check_spec(spec: RunSpec) -> RunSpec:
    """`spec` with its tags deduplicated and times in UTC, or `InvalidRun`."""
    try:
        check_run_id(spec.id)
    except InvalidRecord as error:
        raise InvalidRun("id", error.problem) from None
    for field in ("name", "project", "group", "host", "git_commit"):
        _text(field, getattr(spec, field))
    _text("notes", spec.notes, _NOTES_MAX)
    if not isinstance(spec.config, dict):
        raise InvalidRun("config", "must be a JSON object")
    _json_clean("config", spec.config)
    return msgspec.structs.replace(
        spec, tags=check_tags(spec.tags), started_at=_aware("started_at", spec.started_at)
    )


def _finite_map(field: str, values: object) -> None:
    if not isinstance(values, dict):
        raise InvalidRun(field, "must be an object of numbers")
    for key, value in values.items():
        if type(key) is not str or not 0 < len(key) <= 200 or "\x00" in key:
            raise InvalidRun(field, f"keys are 1-200 characters without NUL, got {key!r}"[:120])
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRun(field, f"{key!r} must be a number")
        if not math.isfinite(value):
            raise InvalidRun(field, f"{key!r} must be finite")


def check_update(update: RunUpdate) -> RunUpdate:
    changes: dict[str, Any] = {}
    if update.status is not UNSET and update.status not in ("running", "completed", "failed"):
        raise InvalidRun("status", "must be running, completed or failed")
    if update.tags is not UNSET:
        changes["tags"] = check_tags(update.tags)
    if update.notes is not UNSET:
        _text("notes", update.notes, _NOTES_MAX)
    if update.summary is not UNSET:
        _finite_map("summary", update.summary)
    if update.ended_at is not UNSET:
        changes["ended_at"] = _aware("ended_at", update.ended_at)
    for checkpoint in update.checkpoints:
        _text("checkpoints", checkpoint.name)
        if not checkpoint.name:
            raise InvalidRun("checkpoints", "a checkpoint needs a name")
        _finite_map("checkpoints", checkpoint.metrics)
        for path in (checkpoint.state_path, checkpoint.sampler_path):
            _text("checkpoints", path, 4096)
    for version in update.model_versions:
        for value in (version.name, version.version, version.stage, version.checkpoint):
            _text("model_versions", value, 4096)
        if not version.name or not version.version:
            raise InvalidRun("model_versions", "a model version needs a name and a version")
    return msgspec.structs.replace(update, **changes) if changes else update


def check_query(query: RunQuery) -> RunQuery:
    if type(query.limit) is not int or not 1 <= query.limit <= 1000:
        raise InvalidRun("limit", "must be an integer from 1 to 1000")
    for status in query.status:
        if status not in ("running", "completed", "failed", "crashed"):
            raise InvalidRun("status", "must be running, completed, failed or crashed")
    check_tags(list(query.tags))
    _text("project", query.project)
    _text("group", query.group)
    for config in query.config:
        if not config.path or not all(_CONFIG_KEY.fullmatch(k) for k in config.path):
            raise InvalidRun("config", "a path is dot-separated keys of letters, digits, _ or -")
        value = config.value
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRun("config", "a number must be finite")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
            raise InvalidRun("config", "an integer must be below 2**53 in magnitude")
        _text("config", value if isinstance(value, str) else None, _NOTES_MAX)
    for metric in query.metrics:
        _check_metric_key("metric", metric.metric, metric.aggregate)
        for bound in (metric.low, metric.high):
            if bound is not None and not math.isfinite(bound):
                raise InvalidRun("metric", "bounds must be finite")
    if query.sort not in ("started_at", "name", "metric"):
        raise InvalidRun("sort", "must be started_at, name or metric:<name>[@aggregate]")
    if query.sort == "metric":
        _check_metric_key("sort", query.sort_metric, query.sort_aggregate)
    if query.cursor is not None:
        decode_cursor(query)
    return query


def _check_metric_key(field: str, metric: object, aggregate: str) -> None:
    # The shape of a name only: a reserved or overlong name is no error, it matches no run.
    if type(metric) is not str or not METRIC_SHAPE.fullmatch(metric):
        raise InvalidRun(
            field, "a metric name is '/'-separated segments of letters, digits or . _ - :"
        )
    if aggregate not in AGGREGATES:
        raise InvalidRun(field, f"the aggregate must be one of {', '.join(AGGREGATES)}")


# -- cursors --------------------------------------------------------------------------------
# A cursor is the sort key of the last run of a page: (sort token, direction, value, id),
# JSON in URL-safe base64. A cursor made under another sort is refused, never misread.

SortValue = int | float | str | None


def encode_cursor(query: RunQuery, value: SortValue, run_id: str) -> str:
    raw = msgspec.json.encode([query.sort_token, query.desc, value, run_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(query: RunQuery) -> tuple[SortValue, str]:
    assert query.cursor is not None
    text = query.cursor
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        token, desc, value, run_id = msgspec.json.decode(raw)
    except (ValueError, TypeError, msgspec.DecodeError):
        token = desc = value = run_id = None
    if type(token) is not str or type(desc) is not bool or type(run_id) is not str:
        raise InvalidRun("cursor", "not a cursor this service made; start from the first page")
    if token != query.sort_token or desc != query.desc:
        raise InvalidRun("cursor", "was made for another sort; start from the first page")
    if query.sort == "started_at":
        valid = type(value) is int
    elif query.sort == "name":
        valid = type(value) is str
    elif query.sort_aggregate == "count":
        valid = value is None or type(value) is int
    else:
        valid = value is None or type(value) in (int, float)
    if not valid:
        raise InvalidRun("cursor", "not a cursor this service made; start from the first page")
    if type(value) is int and query.sort == "metric" and not token.endswith("@count"):
        value = float(value)
    return value, run_id
