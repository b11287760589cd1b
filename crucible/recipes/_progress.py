"""Progress on the console, driven by telemetry events (a bus subscriber, nothing more).

On a terminal: a rich progress bar with step, loss, lr, tokens/s and ETA. Elsewhere (a log
file, CI): a plain line every ``every`` steps and after each evaluation. ``quiet``: nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from crucible.telemetry import attach, detach

_EVENTS = (
    "crucible_train.batch.stop",
    "crucible_train.evaluation.stop",
    "crucible.actor.restarted",
)


class ProgressReporter:
    def __init__(
        self,
        *,
        mode: str = "auto",  # "auto" | "bar" | "lines" | "quiet"
        stream: TextIO | None = None,
        every: int | None = None,
        handler_id: str = "crucible.run.progress",
    ) -> None:
        self._stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self._stream.isatty() else "lines"
        self.mode = mode
        self._every = every
        self._handler_id = handler_id
        self._progress: Progress | None = None
        self._task: Any = None
        self._started = time.monotonic()
        if mode == "quiet":
            return
        if mode == "bar":
            self._progress = Progress(
                TextColumn("[bold]step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self._stream),
                transient=False,
            )
            self._progress.start()
        attach(handler_id, list(_EVENTS), self._handle)

    def print(self, text: str) -> None:
        if self.mode == "quiet":
            return
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)
        else:
            self._stream.write(text + "\n")
            self._stream.flush()

    def _handle(
        self, name: str, measurements: Mapping[str, Any], metadata: Mapping[str, Any], _: Any
    ) -> None:
        if name == "crucible.actor.restarted":
            reason = metadata.get("reason")
            why = f" ({reason})" if reason and reason != "None" else ""
            self.print(f"supervisor: restarted {metadata.get('actor')}{why}")
            return
        if name.endswith("evaluation.stop"):
            self.print(
                f"eval @ step {metadata.get('step')}: nll {measurements.get('nll', 0):.4f}  "
                f"exact match {100 * measurements.get('accuracy', 0):.1f}% "
                f"({metadata.get('examples')} examples)"
            )
            return
        step, total = int(metadata.get("step", 0)), int(metadata.get("total_steps", 0))
        loss = float(measurements.get("loss", float("nan")))
        lr = float(measurements.get("learning_rate", float("nan")))
        tps = float(measurements.get("tokens_per_s", 0.0))
        if self._progress is not None:
            if self._task is None:
                self._task = self._progress.add_task(
                    "train", total=total, completed=step - 1, loss="-", lr="-", tps="-"
                )
            self._progress.update(
                self._task,
                completed=step,
                total=total,
                loss=f"{loss:.4f}",
                lr=f"{lr:.2e}",
                tps=f"{tps:,.0f} tok/s",
            )
            return
        every = self._every or max(1, total // 20)
        if step % every == 0 or step == total or step == 1:
            elapsed = time.monotonic() - self._started
            self.print(
                f"step {step}/{total}  loss {loss:.4f}  lr {lr:.2e}  {tps:,.0f} tok/s  "
                f"{elapsed:.0f}s"
            )

    def close(self) -> None:
        detach(self._handler_id)
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
