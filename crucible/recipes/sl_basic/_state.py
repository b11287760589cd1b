"""What sl_basic's stages share: the run state, its in-flight steps, and the metric history
the run summary is built from."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Iterable

import attrs
from tinker import types

from crucible.metrics import MetricRecord
from crucible.recipes._batches import BatchPlan
from crucible.recipes._config import TrainConfig
from crucible.recipes._data import DatasetSplits
from crucible.recipes._eval import Evaluator
from crucible.recipes._render import ChatRenderer, RenderedBatch
from crucible.recipes._workflow import Context


@attrs.define
class InFlight:
    """One submitted training step and what is known about it so far."""

    step: int
    epoch: int
    batch: int
    lr: float
    tokens: int
    trained_tokens: float
    submitted_at: float
    truncated: int = 0  # conversations of this batch cut at max_length
    skipped: int = 0  # ... and those the cut left with nothing to train on
    fb: Awaitable[types.ForwardBackwardOutput] | None = None
    optim: Awaitable[types.OptimStepResponse] | None = None
    fb_result: types.ForwardBackwardOutput | None = None
    optim_result: types.OptimStepResponse | None = None


@attrs.define
class MetricEnds:
    first: float
    last: float
    max_step: int | None


@attrs.define
class MetricHistory:
    """The first and last recorded value of each metric over the whole run, resumes included.

    A resumed run starts it from the records kept on disk (``MetricHistory.of(records)``);
    ``record_metrics`` then adds what it records, so it always matches the metrics store.
    """

    ends: dict[str, MetricEnds] = attrs.field(factory=dict)

    @classmethod
    def of(cls, records: Iterable[MetricRecord]) -> MetricHistory:
        history = cls()
        for record in records:
            history.add(record.metric, record.value, record.step)
        return history

    def add(self, metric: str, value: float, step: int | None) -> None:
        ends = self.ends.get(metric)
        if ends is None:
            self.ends[metric] = MetricEnds(value, value, step)
            return
        ends.last = value
        if step is not None and (ends.max_step is None or step > ends.max_step):
            ends.max_step = step

    def first(self, metric: str) -> float | None:
        ends = self.ends.get(metric)
        return None if ends is None else ends.first

    def last(self, metric: str) -> float | None:
        ends = self.ends.get(metric)
        return None if ends is None else ends.last

    def max_step(self, metric: str) -> int | None:
        ends = self.ends.get(metric)
        return None if ends is None else ends.max_step

    def names(self) -> list[str]:
        return sorted(self.ends)


@attrs.define
class SLState:
    """The run state the stages share (the ``ctx.state`` of sl_basic)."""

    run_id: str
    resume: bool = False  # continue from the checkpoint store's resume point
    init_from: str | None = None  # a state path to start from (weights only)
    parent_model_id: int | None = None
    splits: DatasetSplits | None = None
    renderer: ChatRenderer | None = None
    plan: BatchPlan | None = None
    evaluator: Evaluator | None = None
    start_step: int = 0
    step: int = 0  # the step most recently submitted (1-based); 0 before the first
    epoch: int = 0
    inflight: deque[InFlight] = attrs.field(factory=deque)
    prepared: tuple[int, RenderedBatch] | None = None  # the next step's rendered batch
    completed: list[InFlight] = attrs.field(factory=list)
    last_logged_step: int = 0
    # when the last step's results were seen; None after a pause (evaluation, checkpoint), so
    # the next step's time is counted from its own submission
    last_completion: float | None = None
    started_at: float = attrs.field(factory=time.perf_counter)
    last_eval: dict[str, float] = attrs.field(factory=dict)
    last_eval_step: int = -1
    train_loss: float = math.nan
    sampler_path: str | None = None
    model_id: int | None = None
    resumed_from: str | None = None
    skipped_lines: int = 0
    # (metric, step) pairs already on disk at the resume step: not recorded again
    recorded_at_resume: frozenset[tuple[str, int]] = frozenset()
    history: MetricHistory = attrs.field(factory=MetricHistory)

    @property
    def total_steps(self) -> int:
        assert self.plan is not None, "build_dataset has not run"
        return self.plan.total_steps


SLContext = Context[TrainConfig, SLState]
