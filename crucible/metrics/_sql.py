"""SQL text and row conversion shared by the SQLite and PostgreSQL stores.

Both keep the same table: metrics(id, run_id, metric, value, step, ts, metadata), `id`
giving arrival order, plus metric_batches(key) for idempotency keys. Placeholders differ
(`?` vs `$n`), so each query is built by a function taking a placeholder factory.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from ._query import Query, bucket_count
from ._record import MetricRecord

__all__ = ["history_sql", "latest_sql", "read_sql", "record_row"]

_encode = msgspec.json.encode

COLUMNS = "run_id, metric, value, step, ts, metadata"
# Read order: steps ascending with step-less records last, then time, then arrival.
ORDER = "(step IS NULL), step, ts, id"
ORDER_DESC = "(step IS NULL) DESC, step DESC, ts DESC, id DESC"

Placeholder = Callable[[int], str]


def read_sql(
    query: Query, placeholder: Placeholder, ts: Callable[[Any], Any]
) -> tuple[str, list[Any]]:
    """SELECT for `query`; `ts` converts a datetime bound into the column's type."""
    where = ["run_id = {}"]
    args: list[Any] = [query.run_id]
    if query.metric is not None:
        where.append("metric = {}")
        args.append(query.metric)
    if query.has_step_filter:
        where.append("step IS NOT NULL")
        if query.step_min is not None:
            where.append("step >= {}")
            args.append(query.step_min)
        if query.step_max is not None:
            where.append("step <= {}")
            args.append(query.step_max)
    if query.since is not None:
        where.append("ts >= {}")
        args.append(ts(query.since))
    if query.until is not None:
        where.append("ts < {}")
        args.append(ts(query.until))
    # Parts without a parameter ("step IS NOT NULL") do not consume a number.
    numbered: list[str] = []
    n = 0
    for part in where:
        if "{}" in part:
            n += 1
            part = part.format(placeholder(n))
        numbered.append(part)
    sql = f"SELECT {COLUMNS} FROM metrics WHERE {' AND '.join(numbered)} ORDER BY {ORDER}"
    return sql, args


def latest_sql(placeholder: Placeholder) -> str:
    return (
        f"SELECT {COLUMNS} FROM (SELECT {COLUMNS}, row_number() OVER "
        f"(PARTITION BY metric ORDER BY {ORDER_DESC}) AS rank "
        f"FROM metrics WHERE run_id = {placeholder(1)}) AS ranked WHERE rank = 1"
    )


def history_sql(placeholder: Placeholder, max_points: int) -> tuple[str, int]:
    """Server-side bucketing, the same rule as `_query.downsample`.

    Parameters: run_id, metric, max_points. Record i of n falls in bucket i * buckets // n;
    each bucket keeps its first minimum, first maximum and last record.
    """
    buckets = bucket_count(max_points)
    p1, p2, p3 = placeholder(1), placeholder(2), placeholder(3)
    sql = f"""
        WITH series AS (
            SELECT {COLUMNS}, id,
                   row_number() OVER (ORDER BY {ORDER}) - 1 AS i,
                   count(*) OVER () AS n
            FROM metrics WHERE run_id = {p1} AND metric = {p2}
        ), bucketed AS (
            SELECT *, CASE WHEN n <= {p3} THEN i ELSE (i * {buckets}) / n END AS bucket
            FROM series
        ), ranked AS (
            SELECT *,
                   row_number() OVER (PARTITION BY bucket ORDER BY value, i) AS low_rank,
                   row_number() OVER (PARTITION BY bucket ORDER BY value DESC, i) AS high_rank,
                   max(i) OVER (PARTITION BY bucket) AS last_i
            FROM bucketed
        )
        SELECT {COLUMNS} FROM ranked
        WHERE low_rank = 1 OR high_rank = 1 OR i = last_i
        ORDER BY i
    """
    return sql, buckets


def record_row(record: MetricRecord, moment: Callable[[datetime], Any]) -> tuple[Any, ...]:
    """The values of `COLUMNS` for `record`, its timestamp converted by `moment`."""
    return (
        record.run_id,
        record.metric,
        record.value,
        record.step,
        moment(record.timestamp),
        _encode(record.metadata).decode() if record.metadata else None,
    )
