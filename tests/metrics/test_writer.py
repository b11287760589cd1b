"""The group-commit writer: failures surface and are retried, the interval bounds loss."""

from __future__ import annotations

import threading

import pytest

from crucible.metrics import MetricRecord, StoreClosed, StoreWriteError
from crucible.metrics._writer import Chunk, GroupCommitWriter


class FlakySink:
    """Fails every write until `healthy` is set, then stores; signals every sync."""

    def __init__(self, *, healthy: bool) -> None:
        self.healthy = threading.Event()
        if healthy:
            self.healthy.set()
        self.stored: list[MetricRecord] = []
        self.synced = threading.Event()

    def write(self, chunks: list[Chunk]) -> None:
        if not self.healthy.is_set():
            raise OSError(28, "No space left on device")
        for chunk in chunks:
            self.stored.extend(chunk.records)

    def sync(self) -> None:
        self.synced.set()


def test_a_failing_sink_is_reported_and_retried_without_loss() -> None:
    sink = FlakySink(healthy=False)  # the disk is full until we say otherwise
    writer = GroupCommitWriter(sink, flush_interval=0.01, max_batch=10, name="test")
    records = [MetricRecord("run", "m", float(i), i) for i in range(5)]
    ticket = writer.enqueue(Chunk(records))
    for _ in range(2):  # each wait reports the next failed attempt
        with pytest.raises(StoreWriteError, match="No space left") as caught:
            writer.wait(ticket, durable=True)
        assert isinstance(caught.value.__cause__, OSError)
    sink.healthy.set()  # space was freed
    writer.wait(ticket, durable=True)  # a retry stored the buffered records
    writer.close()
    assert sink.stored == records


def test_records_become_durable_within_the_flush_interval_without_a_flush() -> None:
    sink = FlakySink(healthy=True)
    writer = GroupCommitWriter(sink, flush_interval=0.01, max_batch=1000, name="test")
    writer.enqueue(Chunk([MetricRecord("run", "m", 1.0)]))
    assert sink.synced.wait(timeout=10)  # nobody asked: the interval did it
    assert len(sink.stored) == 1
    writer.close()
    with pytest.raises(StoreClosed):
        writer.enqueue(Chunk([MetricRecord("run", "m", 1.0)]))


def test_close_reports_records_it_could_not_store() -> None:
    sink = FlakySink(healthy=False)
    writer = GroupCommitWriter(sink, flush_interval=0.01, max_batch=1000, name="test")
    writer.enqueue(Chunk([MetricRecord("run", "m", 1.0)]))
    with pytest.raises(StoreWriteError, match="1 records were not stored"):
        writer.close()


def test_each_write_takes_about_max_batch_records_in_arrival_order() -> None:
    sizes: list[int] = []

    class CountingSink(FlakySink):
        def write(self, chunks: list[Chunk]) -> None:
            sizes.append(sum(len(c.records) for c in chunks))
            super().write(chunks)

    sink = CountingSink(healthy=True)
    writer = GroupCommitWriter(sink, flush_interval=3600, max_batch=10, name="test")
    records = [MetricRecord("run", "m", float(i), i) for i in range(40)]
    with writer._cond:  # hold the writer back until everything is queued
        for i in range(0, 40, 4):
            writer.enqueue(Chunk(records[i : i + 4]))
    writer.wait(writer.enqueued, durable=True)
    writer.close()
    assert sink.stored == records
    assert sum(sizes) == 40 and max(sizes) <= 12  # whole chunks until 10 are taken
