"""Helpers that crucible's tests and benchmarks share, as `trio.testing` is for trio.

A throwaway PostgreSQL cluster and a real `python -m crucible.serve` subprocess. Imported only
by tests and benchmarks, never by the rest of crucible.
"""

from ._ports import free_port
from ._postgres_cluster import PostgresUnavailable, throwaway_cluster
from ._server_process import ServerProcess

__all__ = [
    "PostgresUnavailable",
    "ServerProcess",
    "free_port",
    "throwaway_cluster",
]
