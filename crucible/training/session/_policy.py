"""The session's failure policy: which failed operations are retried in place, how long to
wait before each retry, and the snapshots that keep a restart's replay short.

Retried in place (same request id, backoff with jitter starting in milliseconds, at most
``max_retries`` times per operation):

- every operation, on a backend that applies each request id once (``applies_once``): a
  repeat is answered from the backend's record, so nothing is applied twice;
- position-independent reads (sampling, deleting a checkpoint) on any other backend;
- nothing on a backend whose client already retried (``retries_itself``: Tinker's SDK).

Anything else (a crashed or closed backend, a wedged one, a failed state-changing operation
on a backend without request ids, an operation that used up its retries) loses the backend:
the session restarts, which the tree's restart intensity (``max_restarts``) counts.
"""

from __future__ import annotations

import random
from typing import Any, Final

import attrs

from crucible.actors import Backoff
from crucible.training.port import SAMPLER_OPERATIONS, applies_once, retries_itself
from crucible.training.session._journal import Journal

#: Position-independent operations (on saved weights or files): retried on any backend that
#: does not retry by itself.
RETRYABLE: Final = SAMPLER_OPERATIONS | {"delete_checkpoint"}

#: Session snapshots are named this followed by the journal sequence number of their save: a
#: name is only ever written with the state at one position, so a late write by a lost
#: backend's worker (still finishing its queue after the session gave it up) can never put
#: other weights under the name a restart loads.
SNAPSHOT_PREFIX: Final = "session_snapshot_"


def _non_negative(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen
class SessionRetry:
    """Retries in place of one failed operation: up to ``max_retries`` (0: never), each after
    ``backoff.delay(attempt)``; a seeded backoff makes the delays reproducible."""

    max_retries: int = attrs.field(default=8, validator=_non_negative)
    backoff: Backoff = attrs.field(
        factory=lambda: Backoff(initial=0.002, maximum=0.2, jitter=0.5, seed=0)
    )

    def rng(self, incarnation: int) -> random.Random:
        """The jitter of one session incarnation (each draws its own, reproducibly)."""
        seed = self.backoff.seed
        return random.Random(None if seed is None else seed * 1_000_003 + incarnation)

    def may_retry(self, backend: Any, op: str) -> bool:
        if retries_itself(backend):
            return False
        return applies_once(backend) or op in RETRYABLE


def snapshot_due(journal: Journal, every: int) -> bool:
    """Whether to save a session snapshot now: ``every`` optimizer steps since the state the
    journal replays from, and no save in flight (a second one would add nothing)."""
    if every <= 0:
        return False
    if any(entry.op == "save_state" and not entry.done for entry in journal.entries):
        return False
    return sum(entry.op == "optim_step" for entry in journal.entries) >= every
