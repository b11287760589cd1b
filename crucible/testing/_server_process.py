"""A real `python -m crucible.serve` in a subprocess on a loopback port, for end-to-end tests
and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import attrs

from crucible.service import TokenStore

from ._ports import free_port


@attrs.define
class ServerProcess:
    """`start()` returns once uvicorn listens (the app started); `kill()` is SIGKILL."""

    directory: Path
    port: int = attrs.field(factory=free_port)
    token: str = ""
    read_only_token: str = ""
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[str] | None = None
    startup_log: str = ""

    store: str = ""  # a store URL; default: SQLite in `directory`

    def __attrs_post_init__(self) -> None:
        tokens = TokenStore(self.directory / "tokens.db")
        self.token = tokens.create("writer")
        self.read_only_token = tokens.create("reader", read_only=True)
        tokens.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None, "already running"
        command = [
            sys.executable,
            "-m",
            "crucible.serve",
            "--store",
            self.store or f"sqlite:///{self.directory / 'metrics.db'}",
            "--tokens",
            str(self.directory / "tokens.db"),
            "--port",
            str(self.port),
            "--log-level",
            "info",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        assert self.process.stderr is not None
        seen = []
        for line in self.process.stderr:  # blocks until uvicorn says it is listening
            seen.append(line)
            if "Uvicorn running on" in line:
                os.set_blocking(self.process.stderr.fileno(), False)
                self.startup_log = "".join(seen)
                return
        raise RuntimeError("server exited before starting:\n" + "".join(seen))

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None
