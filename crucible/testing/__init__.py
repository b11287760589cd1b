"""Helpers that crucible's tests and benchmarks share, as `trio.testing` is for trio.

A throwaway PostgreSQL cluster, a real `python -m crucible.serve` subprocess and the service
in a thread. Imported only
by tests and benchmarks, never by the rest of crucible.
"""

from ._ports import free_port
from ._postgres_cluster import PostgresUnavailable, throwaway_cluster
from ._server_process import ServerProcess
from ._service_thread import service_in_thread

__all__ = [
    "PostgresUnavailable",
    "ServerProcess",
    "free_port",
    "service_in_thread",
    "throwaway_cluster",
]
