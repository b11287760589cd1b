"""The metric service in a thread of this process, on a loopback port: a real HTTP server
for clients under test, started in milliseconds (a subprocess takes a second)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from crucible.metrics import MetricsStore
from crucible.service import ServiceConfig, TokenStore, create_app, server_config

from ._ports import free_port

__all__ = ["service_in_thread"]


@contextmanager
def service_in_thread(
    store: MetricsStore,
    *,
    tokens: TokenStore | None = None,
    config: ServiceConfig | None = None,
) -> Iterator[str]:
    """Serve `store` (left open on exit) until the block ends; yield the base URL."""
    import uvicorn

    port = free_port()
    app = create_app(store, tokens=tokens, config=config)
    server = uvicorn.Server(
        server_config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=f"crucible-serve:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the service did not start on port {port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()
