"""What the local Tinker-compatible server serves and how it misbehaves on purpose."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs

#: The HTTP-level failures the fault mode draws from (see ``FaultInjector``); the training
#: layer's FAULT_KINDS are backend faults, a different vocabulary.
HTTP_FAULT_KINDS: Final = ("500", "503", "429", "drop")


@attrs.frozen
class ServerConfig:
    """``api_keys`` empty accepts any key (the SDK itself insists on a ``tml-`` prefix).

    ``long_poll_s`` is how long ``retrieve_future`` holds a request for an unfinished result
    before answering ``try_again`` (the SDK re-polls at once, so this must be long, and under the
    SDK's 45 s read timeout). ``client_config`` is merged into the ``/client/config`` answer, for
    example ``{"fwdbwd_max_chunk_len": 2}`` to make the SDK split forward_backward into chunks.

    ``session_timeout_s``: a session whose heartbeats (every 10 s from the SDK) stop for this
    long expires and its models are freed. ``on_session_expired`` is called (on the server's
    thread) with the id of each session that expires: for tests and embedding.
    """

    host: str = "127.0.0.1"
    port: int = 8700
    root: Path = attrs.field(default=Path("runs/tinker_server"), converter=Path)
    api_keys: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    long_poll_s: float = attrs.field(default=25.0)
    fault_rate: float = attrs.field(default=0.0)
    fault_seed: int = 0
    fault_kinds: tuple[str, ...] = attrs.field(default=HTTP_FAULT_KINDS)
    fault_retry_after_ms: int = 20
    torch_threads: int | None = None
    client_config: dict[str, Any] = attrs.field(factory=dict)
    session_timeout_s: float = attrs.field(default=120.0)
    on_session_expired: Callable[[str], None] | None = attrs.field(default=None, eq=False)

    @session_timeout_s.validator
    def _check_session_timeout(self, _attribute: Any, value: float) -> None:
        if not value > 0:
            raise ValueError(f"session_timeout_s must be > 0, got {value}")

    @long_poll_s.validator
    def _check_long_poll(self, _attribute: Any, value: float) -> None:
        if not 0 < value < 45:
            raise ValueError(f"long_poll_s must be in (0, 45) (the SDK times out at 45 s): {value}")

    @fault_rate.validator
    def _check_rate(self, _attribute: Any, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1], got {value}")

    @fault_kinds.validator
    def _check_kinds(self, _attribute: Any, value: tuple[str, ...]) -> None:
        unknown = sorted(set(value) - set(HTTP_FAULT_KINDS))
        if unknown or not value:
            raise ValueError(
                f"fault_kinds must be a non-empty subset of {HTTP_FAULT_KINDS}: {value}"
            )
