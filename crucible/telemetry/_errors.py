"""Typed errors of crucible.telemetry; each message names the problem and what to do."""

from __future__ import annotations


class TelemetryError(Exception):
    """Base class of every error raised by crucible.telemetry."""


class DuplicateHandler(TelemetryError):
    """A handler id is already attached to the bus."""

    def __init__(self, handler_id: str) -> None:
        super().__init__(
            f"a telemetry handler with id {handler_id!r} is already attached; "
            "detach it first or choose another id"
        )
        self.handler_id = handler_id


class NotFound(TelemetryError, LookupError):
    """No experiment has this id (never started, or cleaned up)."""

    def __init__(self, experiment_id: str) -> None:
        super().__init__(
            f"no experiment with id {experiment_id!r}; list the known ones with list_experiments()"
        )
        self.experiment_id = experiment_id


class _StateError(TelemetryError):
    def __init__(self, experiment_id: str, status: str, wanted: str) -> None:
        super().__init__(f"experiment {experiment_id!r} is {status}; {wanted}")
        self.experiment_id = experiment_id
        self.status = status


class AlreadyPaused(_StateError):
    """pause() on an experiment that is already paused."""


class NotRunning(_StateError):
    """pause() on an experiment that is not running (stopped)."""


class NotPaused(_StateError):
    """resume() on an experiment that is not paused."""


class UnsupportedFormat(TelemetryError, ValueError):
    """export() was asked for a format it does not write."""

    def __init__(self, fmt: str, supported: tuple[str, ...]) -> None:
        super().__init__(f"unsupported export format {fmt!r}; use one of {', '.join(supported)}")
        self.format = fmt


class NoData(TelemetryError):
    """export() of an experiment that recorded no event."""

    def __init__(self, experiment_id: str) -> None:
        super().__init__(
            f"experiment {experiment_id!r} has recorded no event, so there is nothing to export"
        )
        self.experiment_id = experiment_id
