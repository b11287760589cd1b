"""The PostgreSQL store's runs (`RunStore`): the SQL of `_runs_sql`, run on the store's loop."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ._runbook import new_run, record_of, resumed, updated
from ._runs import (
    DEFAULT_STALE_AFTER,
    RunNotFound,
    RunPage,
    RunQuery,
    RunRecord,
    RunSpec,
    RunUpdate,
    check_query,
    check_spec,
    check_update,
    stale_cutoff,
)
from ._runs_sql import (
    Dialect,
    heartbeat_sql,
    list_sql,
    page,
    run_row,
    run_values,
    select_run_sql,
    stats_of,
    summaries_args,
    summaries_sql,
    upsert_run_sql,
)

__all__ = ["PG", "PostgresRuns"]

PG = Dialect(postgres=True)


class PostgresRuns:
    """Mixed into PostgresMetricsStore, which provides `schema`, `_pool` and `_call`."""

    schema: str
    _pool: Any

    async def _call(self, fn: Any, *args: Any) -> Any:
        raise NotImplementedError

    async def _run_record(self, con: Any, row: dict[str, Any], cutoff: datetime) -> RunRecord:
        rows = await con.fetch(summaries_sql(PG, 1, self.schema), [row["id"]])
        return record_of(row, stats_of(rows, PG).get(row["id"], {}), cutoff)

    async def _stored_run(self, con: Any, run_id: str, *, lock: bool) -> dict[str, Any] | None:
        sql = select_run_sql(PG, self.schema) + (" FOR UPDATE" if lock else "")
        found = await con.fetchrow(sql, run_id)
        return None if found is None else run_row(found, PG)

    async def create_run(self, spec: RunSpec) -> tuple[RunRecord, bool]:
        spec = check_spec(spec)

        async def create() -> tuple[RunRecord, bool]:
            now = datetime.now(UTC)
            async with self._pool.acquire() as con, con.transaction():
                # Serialise creators of one id: FOR UPDATE cannot lock a row not there yet.
                await con.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('crucible.run.' || $1))", spec.id
                )
                row = await self._stored_run(con, spec.id, lock=True)
                new = new_run(spec, now) if row is None else resumed(row, spec, now)
                await con.execute(upsert_run_sql(PG, self.schema), *run_values(new, PG))
                cutoff = stale_cutoff(now, DEFAULT_STALE_AFTER)
                return await self._run_record(con, new, cutoff), row is None

        result: tuple[RunRecord, bool] = await self._call(create)
        return result

    async def update_run(self, run_id: str, update: RunUpdate) -> RunRecord:
        update = check_update(update)

        async def change() -> RunRecord:
            now = datetime.now(UTC)
            async with self._pool.acquire() as con, con.transaction():
                row = await self._stored_run(con, run_id, lock=True)
                if row is None:
                    raise RunNotFound(run_id)
                new = updated(row, update, now)
                await con.execute(upsert_run_sql(PG, self.schema), *run_values(new, PG))
                return await self._run_record(con, new, stale_cutoff(now, DEFAULT_STALE_AFTER))

        result: RunRecord = await self._call(change)
        return result

    async def heartbeat(self, run_id: str, at: datetime | None = None) -> None:
        moment = at or datetime.now(UTC)

        async def beat() -> None:
            async with self._pool.acquire() as con:
                status = await con.execute(heartbeat_sql(PG, self.schema), run_id, moment)
            if status.split()[-1] == "0":
                raise RunNotFound(run_id)

        await self._call(beat)

    async def get_run(
        self,
        run_id: str,
        *,
        now: datetime | None = None,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> RunRecord:
        async def get() -> RunRecord:
            async with self._pool.acquire() as con:
                row = await self._stored_run(con, run_id, lock=False)
                if row is None:
                    raise RunNotFound(run_id)
                return await self._run_record(con, row, stale_cutoff(now, stale_after))

        result: RunRecord = await self._call(get)
        return result

    async def list_runs(self, query: RunQuery) -> RunPage:
        query = check_query(query)
        sql, args, _ = list_sql(query, PG, self.schema)

        async def listing() -> RunPage:
            async with self._pool.acquire() as con:
                found = await con.fetch(sql, *args)
                chosen = found[: query.limit]
                ids = [row[0] for row in chosen]
                rows = (
                    await con.fetch(summaries_sql(PG, 1, self.schema), *summaries_args(ids, PG))
                    if ids
                    else []
                )
            return page(found, chosen, stats_of(rows, PG), query, PG)

        result: RunPage = await self._call(listing)
        return result
