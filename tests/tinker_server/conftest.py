from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crucible.tinker_server import RunningServer, ServerConfig, running_server

from .tinker_kit import API_KEY


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server per test module; forward_backward is split into chunks of 2 datums, so the
    SDK sends chunks concurrently and out of order (the first chunk last)."""
    root: Path = tmp_path_factory.mktemp("tinker_server")
    config = ServerConfig(
        port=0,
        root=root,
        api_keys={API_KEY},
        long_poll_s=5.0,
        client_config={"fwdbwd_max_chunk_len": 2},
    )
    with running_server(config) as running:
        yield running
