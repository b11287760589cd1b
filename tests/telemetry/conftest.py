from collections.abc import Iterator

import pytest

from crucible import telemetry


@pytest.fixture(autouse=True)
def _clean_bus() -> Iterator[None]:
    """Each test starts and ends with the handlers it found (the bus table is global)."""
    before = {info.handler_id for info in telemetry.list_handlers()}
    yield
    for info in telemetry.list_handlers():
        if info.handler_id not in before:
            telemetry.detach(info.handler_id)
