"""Ready-made bus handlers: a console line per training step, and a telemetry.jsonl file."""

from __future__ import annotations

import datetime as dt
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

import msgspec

from crucible.telemetry import _bus
from crucible.telemetry._enrichment import _number
from crucible.telemetry._jsonsafe import jsonable

__all__ = ["ConsoleHandler", "JsonlHandler", "format_step"]

TRAINING_STEP_EVENTS = ("crucible_train.batch.stop", "crucible_train.epoch.stop")


def _fmt(value: Any, spec: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if spec == "d" and not isinstance(value, int):
        return None  # an epoch of 1.5 is malformed: leave it out rather than crash
    return format(value, spec)


def format_step(
    event_name: str, measurements: Mapping[str, Any], metadata: Mapping[str, Any]
) -> str:
    """One readable line for a training event, e.g.
    ``batch.stop epoch=1 batch=20 loss=1.2346 lr=1.00e-04 grad_norm=2.000 12.3ms``."""
    values = {**metadata, **measurements}
    parts = [event_name.removeprefix("crucible_train.")]
    for key, label, spec in (
        ("epoch", "epoch", "d"),
        ("batch", "batch", "d"),
        ("step", "step", "d"),
        ("loss", "loss", ".4f"),
        ("accuracy", "acc", ".4f"),
        ("learning_rate", "lr", ".2e"),
        ("gradient_norm", "grad_norm", ".3f"),
    ):
        text = _fmt(values.get(key), spec)
        if text is not None:
            parts.append(f"{label}={text}")
    duration = _number(measurements.get("duration"))
    if duration is not None:
        parts.append(f"{duration / 1_000_000:.1f}ms")
    return " ".join(parts)


class ConsoleHandler:
    """Prints one line per training step (and epoch) to a stream (stderr by default)."""

    def __init__(
        self,
        *,
        handler_id: str = "crucible.console",
        events: Iterable[str] = TRAINING_STEP_EVENTS,
        stream: TextIO | None = None,
    ) -> None:
        self.handler_id = handler_id
        self._stream = stream
        _bus.attach(handler_id, tuple(events), self._handle)

    def _handle(
        self, name: str, measurements: Mapping[str, Any], metadata: Mapping[str, Any], _: Any
    ) -> None:
        stream = self._stream or sys.stderr
        stream.write(format_step(name, measurements, metadata) + "\n")

    def close(self) -> None:
        _bus.detach(self.handler_id)


class JsonlHandler:
    """Appends every matching event to a JSONL file (``telemetry.jsonl`` inside a directory):
    ``{"timestamp": ISO 8601 UTC, "event", "measurements", "metadata"}``. Values JSON cannot
    hold are dropped, never raised on. Each line is flushed as written, so a crash loses at most
    the line being written; a torn last line is the reader's to skip."""

    def __init__(
        self,
        path: str | Path,
        *,
        handler_id: str | None = None,
        events: str | Iterable[str] = "*",
    ) -> None:
        target = Path(path)
        if target.is_dir():
            target = target / "telemetry.jsonl"
        self.path = target
        self.handler_id = handler_id or f"crucible.jsonl.{target}"
        self._lock = threading.Lock()  # emitters may live on several threads
        self._file = target.open("ab")
        self._encoder = msgspec.json.Encoder()
        try:
            _bus.attach(self.handler_id, events, self._handle)
        except BaseException:
            self._file.close()
            raise

    def _handle(
        self, name: str, measurements: Mapping[str, Any], metadata: Mapping[str, Any], _: Any
    ) -> None:
        record = {
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
            "event": name,
            "measurements": jsonable(measurements),
            "metadata": jsonable(metadata),
        }
        line = self._encoder.encode(record) + b"\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)
                self._file.flush()

    def close(self) -> None:
        """Detach and close the file (idempotent)."""
        _bus.detach(self.handler_id)
        with self._lock:
            self._file.close()

    def __enter__(self) -> JsonlHandler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
