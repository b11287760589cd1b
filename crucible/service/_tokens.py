"""Bearer tokens: created by the CLI, stored hashed in SQLite, looked up per request."""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import attrs

__all__ = ["TokenInfo", "TokenStore"]

# Tokens are 256 random bits, so a plain SHA-256 is enough to make a leaked table useless:
# a slow password hash only matters for guessable secrets, and would cost every request.
_PREFIX = "crc_"
_CACHE_SECONDS = 5.0  # how long a revocation by another process may take to be seen


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@attrs.frozen
class TokenInfo:
    name: str
    read_only: bool
    created: str


class TokenStore:
    """The token table in a SQLite file shared by `serve token ...` and the server."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS tokens (
            name TEXT PRIMARY KEY,
            digest TEXT NOT NULL UNIQUE,
            read_only INTEGER NOT NULL,
            created TEXT NOT NULL)"""
        )
        self._cache: dict[str, tuple[float, TokenInfo | None]] = {}

    def create(self, name: str, *, read_only: bool = False) -> str:
        """Store a new token under `name` and return it: it is shown this once, never stored."""
        if not name or len(name) > 100 or not name.isprintable():
            raise ValueError(f"token name must be 1-100 printable characters, got {name!r}")
        token = _PREFIX + secrets.token_urlsafe(32)
        created = datetime.now(UTC).isoformat()
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO tokens (name, digest, read_only, created) VALUES (?, ?, ?, ?)",
                    (name, _digest(token), int(read_only), created),
                )
        except sqlite3.IntegrityError:
            raise ValueError(
                f"a token named {name!r} exists already: revoke it first or pick another name"
            ) from None
        return token

    def revoke(self, name: str) -> bool:
        with self._lock:
            deleted = self._db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount
            self._cache.clear()
        return bool(deleted)

    def list(self) -> list[TokenInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, read_only, created FROM tokens ORDER BY name"
            ).fetchall()
        return [TokenInfo(name, bool(read_only), created) for name, read_only, created in rows]

    def cached(self, token: str) -> tuple[bool, TokenInfo | None]:
        """(True, owner) when the answer is known without touching the database: a recent
        lookup, or a string that cannot be a token; (False, None) otherwise."""
        if not token.startswith(_PREFIX) or len(token) > 100:
            return True, None
        cached = self._cache.get(_digest(token))
        if cached is not None and time.monotonic() - cached[0] < _CACHE_SECONDS:
            return True, cached[1]
        return False, None

    def lookup(self, token: str) -> TokenInfo | None:
        """The token's owner, or None for an unknown token (answers are cached briefly).

        Blocking (SQLite, up to the busy timeout when another process holds a write lock):
        the server calls it from a worker thread. `sqlite3.OperationalError` when the
        database stays locked.
        """
        hit, info = self.cached(token)
        if hit:
            return info
        digest = _digest(token)
        with self._lock:
            row = self._db.execute(
                "SELECT name, read_only, created FROM tokens WHERE digest = ?", (digest,)
            ).fetchone()
        info = None if row is None else TokenInfo(row[0], bool(row[1]), row[2])
        if len(self._cache) > 10_000:  # unknown tokens must not grow the cache forever
            self._cache.clear()
        self._cache[digest] = (time.monotonic(), info)
        return info

    def close(self) -> None:
        with self._lock:
            self._db.close()
