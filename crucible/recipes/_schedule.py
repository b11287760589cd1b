"""Learning-rate schedules: constant, linear decay and cosine decay, with linear warmup."""

from __future__ import annotations

import math
from typing import Literal

LrSchedule = Literal["constant", "linear", "cosine"]
SCHEDULES: tuple[LrSchedule, ...] = ("constant", "linear", "cosine")


def learning_rate(
    step: int,
    total_steps: int,
    base_lr: float,
    schedule: LrSchedule = "constant",
    warmup_steps: int = 0,
) -> float:
    """The learning rate of optimizer step ``step`` (0-based) out of ``total_steps``.

    Warmup rises linearly from ``base_lr / warmup_steps`` to ``base_lr`` over the first
    ``warmup_steps`` steps; then ``linear`` and ``cosine`` decay towards 0, which they would
    reach one step after the last (so no step is wasted at learning rate 0).
    """
    if not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, {total_steps}), got {step}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return base_lr * (1.0 - progress)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
