"""Seeded batching: a fresh shuffle per epoch, and step <-> (epoch, batch) arithmetic.

Everything is a function of (seed, epoch, step), so a resumed run sees exactly the batches an
uninterrupted one would have.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from typing import TypeVar

import attrs

T = TypeVar("T")


@functools.lru_cache(maxsize=4)
def _epoch_order(examples: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(examples))
    random.Random(f"{seed}/epoch/{epoch}").shuffle(order)
    return tuple(order)


@attrs.frozen
class BatchPlan:
    """``examples`` items in batches of ``batch_size`` (the last partial batch of an epoch is
    dropped, unless there are fewer examples than one batch), for ``epochs`` epochs, capped at
    ``max_steps`` steps. Steps are numbered from 1."""

    examples: int
    batch_size: int
    epochs: int
    max_steps: int | None = None
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if self.examples < 1:
            raise ValueError("the training set is empty")

    @property
    def batches_per_epoch(self) -> int:
        return max(1, self.examples // self.batch_size)

    @property
    def total_steps(self) -> int:
        planned = self.epochs * self.batches_per_epoch
        return planned if self.max_steps is None else min(planned, self.max_steps)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of step ``step`` (1-based), both 0-based."""
        return divmod(step - 1, self.batches_per_epoch)

    def order(self, epoch: int) -> list[int]:
        return list(_epoch_order(self.examples, self.seed, epoch))

    def batch(self, items: Sequence[T], step: int) -> list[T]:
        epoch, index = self.position(step)
        order = self.order(epoch)
        return [items[i] for i in order[index * self.batch_size : (index + 1) * self.batch_size]]
