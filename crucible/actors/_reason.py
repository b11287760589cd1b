"""Why an actor stopped."""

from __future__ import annotations

from typing import Literal

import attrs


@attrs.frozen
class ExitReason:
    """``normal``: the actor stopped itself; ``shutdown``: its owner stopped it;
    ``killed``: it did not stop within its shutdown timeout and was cancelled;
    ``crashed``: a handler, ``init`` or a timer raised ``error``."""

    kind: Literal["normal", "shutdown", "killed", "crashed"]
    error: BaseException | None = None

    @property
    def abnormal(self) -> bool:
        """True for exits a ``transient`` child is restarted after."""
        return self.kind in ("crashed", "killed")

    def __str__(self) -> str:
        if self.error is None:
            return self.kind
        return f"{self.kind}: {type(self.error).__name__}: {self.error}"


NORMAL = ExitReason("normal")
SHUTDOWN = ExitReason("shutdown")
KILLED = ExitReason("killed")


def crashed(error: BaseException) -> ExitReason:
    return ExitReason("crashed", error)
