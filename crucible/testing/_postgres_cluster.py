"""A throwaway PostgreSQL cluster: initdb into a temp dir, serve on a free loopback port.

Used by the metrics and service tests and by `python -m bench.stores`. As root, the server
runs as the `postgres` OS user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._ports import free_port

__all__ = ["PostgresUnavailable", "find_bindir", "throwaway_cluster"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or the cluster would not start."""


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb, or one on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@contextmanager
def throwaway_cluster(*, fast_unsafe: bool = False) -> Iterator[str]:
    """Start a private cluster; yield its DSN; stop it and delete its files on exit.

    `fast_unsafe` turns fsync off: fine for tests that never crash the server.
    """
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries not found (apt-get install -y postgresql)"
        )
    root = Path(tempfile.mkdtemp(prefix="crucible-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "server.log"
    port = free_port()
    options = [f"-p {port}", f"-k {root}", "-c listen_addresses=127.0.0.1"]
    if fast_unsafe:
        options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]

    def run(*args: str) -> None:
        result = subprocess.run([*prefix, *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            detail = log.read_text() if log.exists() else ""
            raise PostgresUnavailable(
                f"{' '.join(args[:2])} failed: {result.stderr.strip()}\n{detail}".strip()
            )

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "crucible",
            "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        # -w: pg_ctl itself waits until the server accepts connections.
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
            "-o", " ".join(options), "start")  # fmt: skip
        try:
            yield f"postgresql://crucible@127.0.0.1:{port}/postgres"
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
