"""What the local Tinker-compatible server serves and how it misbehaves on purpose."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs

from crucible.tinker_server._served import ServedModels, parse_model_spec

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

    ``models``: what it serves, each ``NAME=PATH`` (a Hugging Face model directory served as
    NAME) or ``NAME`` (a shipped model, a directory or an HF-cache id, under that name); empty
    serves the models shipped with Crucible. They are found when the config is made, so a
    missing one fails here, before anything listens. ``hf_cache``: a folder where the server
    lays the served models out as a Hugging Face hub cache for clients' tokenizers (see
    ``link_hf_cache``).
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
    models: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    hf_cache: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    served: ServedModels = attrs.field(init=False, eq=False, repr=False)

    @served.default
    def _find_models(self) -> ServedModels:
        return ServedModels(parse_model_spec(spec) for spec in self.models)

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
