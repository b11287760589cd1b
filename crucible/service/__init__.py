"""The metric service: REST API, live WebSocket stream and dashboard over a MetricsStore.

Run it with `python -m crucible.serve`; see docs/service.md.
"""

from ._app import create_app
from ._config import ServiceConfig
from ._server import server_config
from ._stream import SLOW_CONSUMER_CLOSE_CODE
from ._system import SampleSystem, SystemSampler, sample_system
from ._tokens import TokenStore

__all__ = [
    "SLOW_CONSUMER_CLOSE_CODE",
    "SampleSystem",
    "ServiceConfig",
    "SystemSampler",
    "TokenStore",
    "create_app",
    "sample_system",
    "server_config",
]
