"""Running the server: in the foreground (the CLI) or on a background thread (tests, notebooks)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import uvicorn

from crucible.tinker_server._app import build_app
from crucible.tinker_server._config import ServerConfig
from crucible.tinker_server._faults import InjectedServerFault


class ServerStartError(RuntimeError):
    """The server did not come up (the port is taken, or startup failed: see the log)."""


@attrs.frozen
class RunningServer:
    """A server started by ``running_server``: point the SDK's ``base_url`` at ``base_url``."""

    base_url: str
    config: ServerConfig
    faults: list[InjectedServerFault]


def _uvicorn(config: ServerConfig, app: object, graceful_s: int) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,  # type: ignore[arg-type]
            host=config.host,
            port=config.port,
            log_level="warning",
            lifespan="on",
            # Long-polls end within long_poll_s; do not wait for all of them on shutdown.
            timeout_graceful_shutdown=graceful_s,
        )
    )


def serve(config: ServerConfig) -> None:
    """Serve until interrupted (Ctrl-C)."""
    _uvicorn(config, build_app(config), graceful_s=5).run()


@contextmanager
def running_server(
    config: ServerConfig | None = None, *, start_timeout: float = 30.0
) -> Iterator[RunningServer]:
    """Serve on a background thread for the duration of the block.

    With ``port=0`` a free port is picked. The listening socket is bound before the thread
    starts, so clients can connect at once; the block is entered after the app's startup has
    run (an event, not a sleep), and leaving it stops the server and joins the thread.
    """
    config = config if config is not None else ServerConfig(port=0)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((config.host, config.port))
    listener.listen(128)
    port = listener.getsockname()[1]
    config = attrs.evolve(config, port=port)
    started = threading.Event()
    faults: list[InjectedServerFault] = []
    server = _uvicorn(config, build_app(config, started, faults), graceful_s=1)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[listener])
        except BaseException as error:  # reported to the caller below
            failure.append(error)
        finally:
            started.set()

    thread = threading.Thread(target=run, name=f"tinker-server-{port}", daemon=True)
    thread.start()
    try:
        if not started.wait(start_timeout) or failure or not thread.is_alive():
            raise ServerStartError(f"the Tinker server on port {port} did not start: {failure}")
        yield RunningServer(f"http://{config.host}:{port}", config, faults)
    finally:
        server.should_exit = True
        thread.join()
        listener.close()
