"""Crash safety: a writer killed with SIGKILL at random moments loses nothing it flushed.

A forked child records keyed batches as fast as it can and reports each batch whose flush()
returned; the parent kills it at a random point (after a random number of reports, while the
child keeps writing), reopens the store and checks that

- every record reported flushed is there, in order, with no gap and no duplicate;
- nothing partial survives: a keyed batch is all there or not at all, and the JSONL file
  holds only whole, valid lines;
- re-sending every batch with its idempotency key stores each exactly once.

Forking (rather than starting a new interpreter) keeps each round at a few milliseconds.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import msgspec
import pytest

from crucible.metrics import JsonlMetricsStore, MetricRecord, SqliteMetricsStore

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SEEDS = [11, 22, 33, 44]
KILLS_PER_SEED = 6


def batches(run: str, seed: int) -> Iterator[tuple[str, list[MetricRecord]]]:
    """The same endless sequence of keyed batches for the same run and seed."""
    rng = random.Random(seed)
    step = 0
    for n in itertools.count():
        size = rng.randint(1, 60)
        padding = {"note": "x" * rng.randint(0, 300)}
        batch = [
            MetricRecord(run, "loss", float(s), s, T0 + timedelta(microseconds=s), padding)
            for s in range(step, step + size)
        ]
        step += size
        yield f"{run}/{n}", batch


def open_store(kind: str, path: Path) -> JsonlMetricsStore | SqliteMetricsStore:
    if kind == "jsonl":
        return JsonlMetricsStore(path, flush_interval=0.002)
    return SqliteMetricsStore(path, flush_interval=0.002)


def child(kind: str, path: Path, run: str, seed: int, report_fd: int) -> None:
    store = open_store(kind, path)
    flush_every = random.Random(seed).randint(1, 3)
    for n, (key, batch) in enumerate(batches(run, seed)):
        store.sync.record_many(batch, idempotency_key=key)
        if n % flush_every == 0:
            store.sync.flush()
            os.write(report_fd, b"%d\n" % n)


def run_and_kill(kind: str, path: Path, run: str, seed: int, reports: int) -> int:
    """Fork a writer, kill it after `reports` flush reports; return the last flushed batch."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_fd)
            child(kind, path, run, seed, write_fd)
        finally:
            os._exit(1)
    os.close(write_fd)
    buffer = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while buffer.count(b"\n") < reports:
            chunk = pipe.read(4096)
            if not chunk:
                pytest.fail(f"the writer exited early: {os.waitpid(pid, 0)}")
            buffer += chunk
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        buffer += pipe.read()  # reports written before the kill landed
    return max(int(n) for n in buffer.split())


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_sigkill_at_random_moments_loses_nothing_flushed(kind: str, tmp_path: Path) -> None:
    path = tmp_path / ("metrics.jsonl" if kind == "jsonl" else "metrics.db")
    for seed in SEEDS:
        rng = random.Random(seed)
        for kill in range(KILLS_PER_SEED):
            run = f"seed{seed}-kill{kill}"
            flushed = run_and_kill(kind, path, run, seed, reports=rng.randint(1, 4))
            sizes = [len(b) for _, b in itertools.islice(batches(run, seed), flushed + 200)]
            boundaries = list(itertools.accumulate(sizes))

            store = open_store(kind, path)  # reopening repairs what the kill tore
            try:
                if isinstance(store, JsonlMetricsStore):
                    report = anyio.run(store.scan)
                    assert (report.bad_lines, report.torn_tail) == ([], False)
                records = read_all(store, run)
                steps = [r.step for r in records]
                assert steps == list(range(len(steps))), "a gap, a duplicate or disorder"
                assert len(steps) >= boundaries[flushed], "a flushed record was lost"
                assert len(steps) in boundaries, "a keyed batch survived in part"
                whole = boundaries.index(len(steps)) + 1
                # The client retries everything it ever sent, and a little more.
                for key, batch in itertools.islice(batches(run, seed), whole + 3):
                    store.sync.record_many(batch, idempotency_key=key)
                store.sync.flush()
                assert [r.step for r in read_all(store, run)] == list(range(boundaries[whole + 2]))
            finally:
                store.sync.close()
    if kind == "jsonl":
        assert_only_whole_lines(path)


def read_all(store: JsonlMetricsStore | SqliteMetricsStore, run: str) -> list[MetricRecord]:
    async def read() -> list[MetricRecord]:
        return await store.read(run)

    return anyio.run(read)


def assert_only_whole_lines(path: Path) -> None:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    decoder = msgspec.json.Decoder(MetricRecord)
    for line in data.splitlines():
        decoder.decode(line)  # raises on any partial or corrupt line
