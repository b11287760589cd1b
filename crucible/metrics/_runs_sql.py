"""The runs tables in SQL, shared by the SQLite and PostgreSQL stores.

Tables: runs (one row per run) and run_summaries (one row per run and metric: count, min,
max and the last point, kept on ingest by an upsert per batch, so listing runs and reading
the latest values never scan points). A `Dialect` carries what differs: placeholders
(`?n` / `$n`, both reusable), time columns (microseconds / timestamptz), JSON (text /
jsonb), and collation (PostgreSQL sorts text with "C", so both sort as Python does).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import msgspec

from ._record import MetricRecord
from ._runbook import BatchStat, micros, run_starts
from ._runs import (
    ConfigFilter,
    MetricStat,
    RunPage,
    RunQuery,
    RunRecord,
    decode_cursor,
    encode_cursor,
)

__all__ = ["RUN_COLUMNS", "Dialect", "list_sql"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_encode = msgspec.json.encode
_decode = msgspec.json.decode

RUN_COLUMNS = (
    "id", "name", "project", "grp", "tags", "notes", "config", "status", "started_at",
    "ended_at", "heartbeat_at", "host", "git_commit", "summary", "checkpoints", "model_versions",
)  # fmt: skip
_JSON_FIELDS = ("tags", "config", "summary", "checkpoints", "model_versions")
_TIME_FIELDS = ("started_at", "ended_at", "heartbeat_at")
SUMMARY_COLUMNS = "run_id, metric, n, lo, hi, last_value, last_step, last_ts, last_metadata"
AGGREGATE_COLUMN = {"count": "n", "min": "lo", "max": "hi", "last": "last_value"}


@attrs.frozen
class Dialect:
    postgres: bool

    def p(self, n: int) -> str:
        return f"${n}" if self.postgres else f"?{n}"

    def moment(self, value: datetime) -> Any:
        return value if self.postgres else micros(value)

    def from_moment(self, value: Any) -> datetime:
        if self.postgres:
            moment: datetime = value.astimezone(UTC)
            return moment
        return _EPOCH + timedelta(microseconds=value)

    def from_micros(self, value: int) -> Any:
        return _EPOCH + timedelta(microseconds=value) if self.postgres else value

    @property
    def greatest(self) -> str:
        return "GREATEST" if self.postgres else "max"

    @property
    def least(self) -> str:
        return "LEAST" if self.postgres else "min"

    @property
    def collate(self) -> str:
        return ' COLLATE "C"' if self.postgres else ""

    def placeholders(self, count: int, start: int = 1) -> str:
        return ", ".join(self.p(n) for n in range(start, start + count))


# -- schema ---------------------------------------------------------------------------------


def schema(d: Dialect, s: str = "") -> list[str]:
    """The migration that adds runs: tables, then the runs and summaries of stored points."""
    json, time = ("jsonb", "timestamptz") if d.postgres else ("TEXT", "INTEGER")
    text, real, big = (
        ("text", "double precision", "bigint") if d.postgres else ("TEXT", "REAL", "INTEGER")
    )
    prefix = f"{s}." if s else ""
    empty_list, empty_map = ("'[]'::jsonb", "'{}'::jsonb") if d.postgres else ("'[]'", "'{}'")
    return [
        f"""CREATE TABLE {prefix}runs (
            id {text} PRIMARY KEY, name {text} NOT NULL, project {text}, grp {text},
            tags {json} NOT NULL, notes {text} NOT NULL, config {json} NOT NULL,
            status {text} NOT NULL, started_at {time} NOT NULL, ended_at {time},
            heartbeat_at {time} NOT NULL, host {text}, git_commit {text},
            summary {json} NOT NULL, checkpoints {json} NOT NULL, model_versions {json} NOT NULL
        )""",
        f"CREATE INDEX runs_started ON {prefix}runs (started_at, id)",
        f"""CREATE TABLE {prefix}run_summaries (
            run_id {text} NOT NULL, metric {text} NOT NULL, n {big} NOT NULL,
            lo {real} NOT NULL, hi {real} NOT NULL, last_value {real} NOT NULL,
            last_step {big}, last_ts {time} NOT NULL, last_metadata {json},
            PRIMARY KEY (run_id, metric)
        )""",
        # Databases made before runs existed: their runs and summaries, from the points.
        f"""INSERT INTO {prefix}run_summaries ({SUMMARY_COLUMNS})
            SELECT run_id, metric, n, lo, hi, value, step, ts, metadata FROM (
                SELECT run_id, metric, value, step, ts, metadata,
                       row_number() OVER (PARTITION BY run_id, metric ORDER BY
                           (step IS NULL) DESC, step DESC, ts DESC, id DESC) AS rank,
                       count(*) OVER w AS n, min(value) OVER w AS lo, max(value) OVER w AS hi
                FROM {prefix}metrics WINDOW w AS (PARTITION BY run_id, metric)
            ) AS ranked WHERE rank = 1""",
        f"""INSERT INTO {prefix}runs (id, name, tags, notes, config, status, started_at,
                heartbeat_at, summary, checkpoints, model_versions)
            SELECT run_id, run_id, {empty_list}, '', {empty_map}, 'running', min(ts), max(ts),
                   {empty_map}, {empty_list}, {empty_list}
            FROM {prefix}metrics GROUP BY run_id""",
    ]


# -- rows -----------------------------------------------------------------------------------


def run_values(row: dict[str, Any], d: Dialect) -> tuple[Any, ...]:
    values: list[Any] = []
    for column in RUN_COLUMNS:
        value = row["group" if column == "grp" else column]
        if column in _JSON_FIELDS:
            value = _encode(value).decode()
        elif column in _TIME_FIELDS and value is not None:
            value = d.moment(value)
        values.append(value)
    return tuple(values)


_CHECKPOINTS = msgspec.json.Decoder(list[Any])


def run_row(values: Sequence[Any], d: Dialect) -> dict[str, Any]:
    from ._runs import CheckpointRef, ModelVersionRef

    row: dict[str, Any] = {}
    for column, value in zip(RUN_COLUMNS, values, strict=False):
        if column in _JSON_FIELDS:
            value = _decode(value)
        elif column in _TIME_FIELDS and value is not None:
            value = d.from_moment(value)
        row["group" if column == "grp" else column] = value
    row["checkpoints"] = msgspec.convert(row["checkpoints"], list[CheckpointRef])
    row["model_versions"] = msgspec.convert(row["model_versions"], list[ModelVersionRef])
    return row


def upsert_run_sql(d: Dialect, s: str = "") -> str:
    table = f"{s}.runs" if s else "runs"
    sets = ", ".join(f"{c} = excluded.{c}" for c in RUN_COLUMNS[1:])
    return (
        f"INSERT INTO {table} ({', '.join(RUN_COLUMNS)}) VALUES "
        f"({d.placeholders(len(RUN_COLUMNS))}) ON CONFLICT (id) DO UPDATE SET {sets}"
    )


def select_run_sql(d: Dialect, s: str = "") -> str:
    table = f"{s}.runs" if s else "runs"
    return f"SELECT {', '.join(RUN_COLUMNS)} FROM {table} WHERE id = {d.p(1)}"


def touch_run_sql(d: Dialect, s: str = "") -> str:
    """A run that points create (status running), or a heartbeat for one that exists."""
    table = f"{s}.runs" if s else "runs"
    lists, maps = ("'[]'::jsonb", "'{}'::jsonb") if d.postgres else ("'[]'", "'{}'")
    return (
        f"INSERT INTO {table} (id, name, tags, notes, config, status, started_at, heartbeat_at,"
        f" summary, checkpoints, model_versions) VALUES ({d.p(1)}, {d.p(1)}, {lists}, '', "
        f"{maps}, 'running', {d.p(2)}, {d.p(3)}, {maps}, {lists}, {lists}) "
        f"ON CONFLICT (id) DO UPDATE SET heartbeat_at = "
        f"{d.greatest}({table}.heartbeat_at, excluded.heartbeat_at)"
    )


def heartbeat_sql(d: Dialect, s: str = "") -> str:
    table = f"{s}.runs" if s else "runs"
    return (
        f"UPDATE {table} SET heartbeat_at = {d.greatest}(heartbeat_at, {d.p(2)}) "
        f"WHERE id = {d.p(1)}"
    )


def touch_values(
    stats: dict[tuple[str, str], BatchStat], now: datetime, d: Dialect
) -> list[tuple[Any, ...]]:
    return [(run, d.moment(start), d.moment(now)) for run, start in run_starts(stats).items()]


def upsert_summary_sql(d: Dialect, s: str = "") -> str:
    table = f"{s}.run_summaries" if s else "run_summaries"
    newer = (
        "(excluded.last_step IS NULL, COALESCE(excluded.last_step, 0), excluded.last_ts) >= "
        f"({table}.last_step IS NULL, COALESCE({table}.last_step, 0), {table}.last_ts)"
    )
    last = ", ".join(
        f"{c} = CASE WHEN {newer} THEN excluded.{c} ELSE {table}.{c} END"
        for c in ("last_value", "last_step", "last_ts", "last_metadata")
    )
    return (
        f"INSERT INTO {table} ({SUMMARY_COLUMNS}) VALUES ({d.placeholders(9)}) "
        f"ON CONFLICT (run_id, metric) DO UPDATE SET n = {table}.n + excluded.n, "
        f"lo = {d.least}({table}.lo, excluded.lo), hi = {d.greatest}({table}.hi, excluded.hi), "
        f"{last}"
    )


def summary_values(stats: dict[tuple[str, str], BatchStat], d: Dialect) -> list[tuple[Any, ...]]:
    rows = []
    for (run_id, metric), stat in stats.items():
        last = stat.last
        metadata = _encode(last.metadata).decode() if last.metadata else None
        rows.append(
            (run_id, metric, stat.count, stat.min, stat.max, last.value, last.step,
             d.moment(last.timestamp), metadata)
        )  # fmt: skip
    return rows


def summaries_sql(d: Dialect, count: int, s: str = "") -> str:
    table = f"{s}.run_summaries" if s else "run_summaries"
    where = f"= ANY({d.p(1)}::text[])" if d.postgres else f"IN ({d.placeholders(count)})"
    return f"SELECT {SUMMARY_COLUMNS} FROM {table} WHERE run_id {where}"


def summaries_args(run_ids: list[str], d: Dialect) -> list[Any]:
    return [run_ids] if d.postgres else list(run_ids)


def stats_of(rows: Sequence[Sequence[Any]], d: Dialect) -> dict[str, dict[str, MetricStat]]:
    stats: dict[str, dict[str, MetricStat]] = {}
    for run_id, metric, n, lo, hi, last, step, ts, _ in sorted(rows, key=lambda r: (r[0], r[1])):
        stats.setdefault(run_id, {})[metric] = MetricStat(
            count=n, min=lo, max=hi, last=last, last_step=step, last_timestamp=d.from_moment(ts)
        )
    return stats


_metadata = msgspec.json.Decoder(dict[str, Any])


def latest_of(rows: Sequence[Sequence[Any]], d: Dialect) -> dict[str, MetricRecord]:
    """`MetricsStore.latest` from a run's summary rows (their last points)."""
    return {
        metric: MetricRecord(
            run_id, metric, last, step, d.from_moment(ts), _metadata.decode(meta) if meta else {}
        )
        for run_id, metric, _, _, _, last, step, ts, meta in sorted(rows, key=lambda r: r[1])
    }


# -- listing --------------------------------------------------------------------------------


class _Args:
    def __init__(self, d: Dialect) -> None:
        self.d = d
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return self.d.p(len(self.values))


def _config_clause(c: ConfigFilter, p: _Args, d: Dialect) -> str:
    if d.postgres:
        return f"r.config #> {p(list(c.path))}::text[] = {p(_encode(c.value).decode())}::jsonb"
    path = p("$" + "".join(f'."{key}"' for key in c.path))
    kind = f"json_type(r.config, {path})"
    value = c.value
    if isinstance(value, bool):
        return f"{kind} = {p('true' if value else 'false')}"
    if value is None:
        return f"{kind} = 'null'"
    if isinstance(value, str):
        return f"{kind} = 'text' AND json_extract(r.config, {path}) = {p(value)}"
    return f"{kind} IN ('integer', 'real') AND json_extract(r.config, {path}) = {p(value)}"


def list_sql(query: RunQuery, d: Dialect, s: str = "") -> tuple[str, list[Any], str]:
    """SELECT of a page of runs (one more than the limit, to know whether more follow), the
    args, and the sort expression's column alias `sort_value` last in each row."""
    prefix = f"{s}." if s else ""
    p = _Args(d)
    cutoff = p(d.moment(query.stale_before()))
    status = (
        f"(CASE WHEN r.status = 'running' AND r.heartbeat_at < {cutoff} "
        "THEN 'crashed' ELSE r.status END)"
    )
    where: list[str] = []
    joins = ""
    if query.status:
        where.append(f"{status} IN ({', '.join(p(x) for x in query.status)})")
    for tag in query.tags:
        if d.postgres:
            where.append(f"r.tags @> jsonb_build_array({p(tag)}::text)")
        else:
            where.append(f"EXISTS (SELECT 1 FROM json_each(r.tags) AS t WHERE t.value = {p(tag)})")
    if query.project is not None:
        where.append(f"r.project = {p(query.project)}")
    if query.group is not None:
        where.append(f"r.grp = {p(query.group)}")
    where.extend(_config_clause(c, p, d) for c in query.config)
    for m in query.metrics:
        column = f"m.{AGGREGATE_COLUMN[m.aggregate]}"
        bounds = "".join(
            f" AND {column} {op} {p(bound)}"
            for op, bound in ((">=", m.low), ("<=", m.high))
            if bound is not None
        )
        where.append(
            f"EXISTS (SELECT 1 FROM {prefix}run_summaries AS m WHERE m.run_id = r.id "
            f"AND m.metric = {p(m.metric)}{bounds})"
        )
    if query.sort == "metric":
        joins = (
            f" LEFT JOIN {prefix}run_summaries AS k ON k.run_id = r.id "
            f"AND k.metric = {p(query.sort_metric)}"
        )
        key = f"k.{AGGREGATE_COLUMN[query.sort_aggregate]}"
    elif query.sort == "name":
        key = f"r.name{d.collate}"
    else:
        key = "r.started_at"
    run_id = f"r.id{d.collate}"
    desc = query.desc
    if query.cursor is not None:
        value, after_id = decode_cursor(query)
        beyond = "<" if desc else ">"
        if value is None:
            where.append(f"({key} IS NULL AND {run_id} {beyond} {p(after_id)})")
        else:
            if query.sort == "started_at":
                assert type(value) is int
                value = d.from_micros(value)
            v = p(value)
            where.append(
                f"({key} {beyond} {v} OR ({key} = {v} AND {run_id} {beyond} {p(after_id)}) "
                f"OR {key} IS NULL)"
            )
    direction = "DESC" if desc else "ASC"
    columns = ", ".join(f"r.{c}" for c in RUN_COLUMNS)
    sql = (
        f"SELECT {columns}, {status} AS effective, {key} AS sort_value "
        f"FROM {prefix}runs AS r{joins}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY ({key} IS NULL), {key} {direction}, {run_id} {direction}"
        + f" LIMIT {p(query.limit + 1)}"
    )
    return sql, p.values, key


def sort_value_of(raw: Any, query: RunQuery, d: Dialect) -> Any:
    """The cursor's form of a row's sort value (started_at as microseconds)."""
    if query.sort == "started_at":
        return micros(d.from_moment(raw))
    if query.sort == "metric" and raw is not None and query.sort_aggregate != "count":
        return float(raw)
    return raw


def page(
    found: Sequence[Sequence[Any]],
    chosen: Sequence[Sequence[Any]],
    stats: dict[str, dict[str, MetricStat]],
    query: RunQuery,
    d: Dialect,
) -> RunPage:
    """The page from the rows of `list_sql` (`found`: up to limit + 1, `chosen`: the first
    `limit`) and their runs' summaries."""
    width = len(RUN_COLUMNS)
    runs = []
    for values in chosen:
        row = run_row(values[:width], d)
        metrics = stats.get(row["id"], {})
        runs.append(RunRecord(**{**row, "status": values[width], "metrics": metrics}))
    cursor = None
    if len(found) > query.limit:
        last = chosen[-1]
        cursor = encode_cursor(query, sort_value_of(last[width + 1], query, d), last[0])
    return RunPage(runs, cursor)
