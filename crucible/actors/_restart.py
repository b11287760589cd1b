"""Pure restart policy: backoff delays and restart intensity. No I/O, no clocks of their own,
so the schedule can be asserted exactly and property-tested."""

from __future__ import annotations

import random
from collections import deque

import attrs


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"Backoff.{attribute.name} must be >= 0, got {value}")


@attrs.frozen
class Backoff:
    """Delay before the k-th restart within the current intensity window (k = 0, 1, ...):
    ``min(maximum, initial * multiplier**k)``, then scaled by a random factor in
    ``[1 - jitter, 1 + jitter]`` (and capped at ``maximum`` again). ``seed`` makes the jitter
    reproducible; ``Backoff.none()`` restarts at once."""

    initial: float = attrs.field(default=0.01, validator=_non_negative)
    maximum: float = attrs.field(default=1.0, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0)
    jitter: float = attrs.field(default=0.1)
    seed: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.multiplier < 1:
            raise ValueError(f"Backoff.multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Backoff.jitter must be within [0, 1], got {self.jitter}")
        if self.maximum < self.initial:
            raise ValueError(
                f"Backoff.maximum ({self.maximum}) must be >= initial ({self.initial})"
            )

    @classmethod
    def none(cls) -> Backoff:
        return cls(initial=0.0, maximum=0.0, jitter=0.0)

    def rng(self) -> random.Random:
        return random.Random(self.seed)

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 1000))
        if self.jitter == 0 or base == 0:
            return base
        return min(self.maximum, base * (1 + self.jitter * rng.uniform(-1.0, 1.0)))

    def schedule(self, attempts: int) -> list[float]:
        """The delays a fresh supervisor with this backoff would use for restarts 0..n-1."""
        rng = self.rng()
        return [self.delay(k, rng) for k in range(attempts)]


class RestartIntensity:
    """OTP's restart intensity: more than ``max_restarts`` restarts within ``max_seconds``
    (counted across the whole supervisor) means the supervisor gives up."""

    __slots__ = ("_times", "max_restarts", "max_seconds")

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        if max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._times: deque[float] = deque()

    def record(self, now: float) -> bool:
        """Count a restart at time ``now``; False if that exceeds the intensity."""
        self._times.append(now)
        while now - self._times[0] > self.max_seconds:
            self._times.popleft()
        return len(self._times) <= self.max_restarts

    @property
    def recent(self) -> int:
        """Restarts in the current window (after the latest ``record``)."""
        return len(self._times)
