"""A Tinker-compatible HTTP server over the local CPU backend.

The unmodified ``tinker`` SDK runs against it end to end on loopback: for tests, and for
developing a Tinker recipe offline. ``python -m crucible.tinker_server --port 8700 --root DIR``.
"""

from crucible.tinker_server._config import HTTP_FAULT_KINDS, ServerConfig
from crucible.tinker_server._faults import InjectedServerFault
from crucible.tinker_server._run import RunningServer, ServerStartError, running_server, serve

__all__ = [
    "HTTP_FAULT_KINDS",
    "InjectedServerFault",
    "RunningServer",
    "ServerConfig",
    "ServerStartError",
    "running_server",
    "serve",
]
