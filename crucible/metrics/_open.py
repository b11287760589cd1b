"""open_store(url): pick and open an adapter from a URL."""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio.to_thread

from ._protocol import MetricsStore

__all__ = ["open_store"]


async def open_store(url: str, **options: Any) -> MetricsStore:
    """Open the store named by `url`; `options` go to the adapter's constructor.

    - `memory://`
    - `jsonl:///abs/path/metrics.jsonl`, `jsonl://relative/path.jsonl`, or a bare path
    - `sqlite:///abs/path.db` (or `sqlite://relative.db`)
    - `postgresql://user@host:port/db` (also `postgres://`), needs the `postgres` extra
    - `http://host:port` (or https): the metric service, `RemoteMetricsStore(url, token=...)`

    Opening does blocking I/O, so it runs in a worker thread.
    """
    scheme, _, rest = url.partition("://")
    if not _ or "/" in scheme or "\\" in scheme:
        scheme, rest = "jsonl", url  # a bare path
    scheme = scheme.lower()
    if scheme == "memory":
        from ._memory import MemoryMetricsStore

        return MemoryMetricsStore()
    if scheme in ("postgresql", "postgres"):
        from ._postgres import PostgresMetricsStore

        return await anyio.to_thread.run_sync(
            functools.partial(PostgresMetricsStore, url, **options)
        )
    if scheme in ("jsonl", "sqlite"):
        path = _path_of(rest, url)
        if scheme == "jsonl":
            from ._jsonl import JsonlMetricsStore

            opener: Any = JsonlMetricsStore
        else:
            from ._sqlite import SqliteMetricsStore

            opener = SqliteMetricsStore
        store: MetricsStore = await anyio.to_thread.run_sync(
            functools.partial(opener, path, **options)
        )
        return store
    if scheme in ("http", "https"):  # the metric service (`python -m crucible.serve`)
        from ._remote import RemoteMetricsStore

        return await anyio.to_thread.run_sync(functools.partial(RemoteMetricsStore, url, **options))
    raise ValueError(
        f"unsupported metrics store URL {url!r}: use memory://, jsonl:///path, a path, "
        "sqlite:///path.db, postgresql://... or http(s)://host:port"
    )


def _path_of(rest: str, url: str) -> str:
    # "jsonl:///abs/p" -> rest "/abs/p"; "jsonl://rel/p" -> "rel/p"; a query string is refused.
    if "?" in rest or "#" in rest:
        parts = urlsplit(url)
        raise ValueError(f"metrics store URL {url!r} takes no query or fragment ({parts.query})")
    path = unquote(rest)
    if not path:
        raise ValueError(f"metrics store URL {url!r} names no file")
    return path
