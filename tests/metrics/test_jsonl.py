"""JSONL specifics: torn tails, garbage lines, several writers on one file, key repair."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from crucible.metrics import CorruptLinesWarning, JsonlMetricsStore, MetricRecord

pytestmark = pytest.mark.anyio


T0 = datetime(2025, 1, 1, tzinfo=UTC)


def line(step: int, run: str = "run") -> bytes:
    record = MetricRecord(run, "loss", float(step), step, T0 + timedelta(seconds=step))
    return msgspec.json.encode(record) + b"\n"


def append(path: Path, data: bytes) -> None:
    """Append behind the store's back, as another (crashing) writer would."""
    with path.open("ab") as file:
        file.write(data)


async def test_a_torn_last_line_is_skipped_on_read_and_cut_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    torn = line(2)[:-20]
    path.write_bytes(line(0) + line(1) + torn)
    async with JsonlMetricsStore(path) as store:  # reopening repairs the tail...
        assert path.read_bytes() == line(0) + line(1)
        await store.record("run", "loss", 3.0, step=3)
        await store.flush()
        assert [r.step for r in await store.read("run")] == [0, 1, 3]
        # ... and a torn tail written behind our back is skipped by readers.
        append(path, torn)
        assert [r.step for r in await store.read("run")] == [0, 1, 3]
        report = await store.scan()
        assert (report.records, report.bad_lines, report.torn_tail) == (3, [], True)
        await store.record("run", "loss", 4.0, step=4)  # the writer repairs before appending
    async with JsonlMetricsStore(path) as store:
        assert [r.step for r in await store.read("run")] == [0, 1, 3, 4]
        assert (await store.scan()).torn_tail is False


async def test_a_complete_last_record_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(line(0) + line(1)[:-1])
    async with JsonlMetricsStore(path) as store:
        assert [r.step for r in await store.read("run")] == [0, 1]
    assert path.read_bytes() == line(0) + line(1)


async def test_garbage_lines_are_reported_with_line_numbers_and_never_rewritten(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.jsonl"
    garbage = [
        b"this is not json\n",
        b'{"run_id":"run","metric":"loss","value":"high","step":1}\n',  # wrong type
        b'{"run_id":"run","metric":"loss","value":1.0,"step":-5,'  # fails validation
        b'"timestamp":"2025-01-01T00:00:00Z","metadata":{}}\n',
    ]
    original = line(0) + garbage[0] + line(1) + garbage[1] + b"\n" + garbage[2] + line(2)
    path.write_bytes(original)
    async with JsonlMetricsStore(path) as store:
        with pytest.warns(CorruptLinesWarning, match=r"line 2, 4, 6\b"):
            assert [r.step for r in await store.read("run")] == [0, 1, 2]
        report = await store.scan()
        assert [bad.line for bad in report.bad_lines] == [2, 4, 6]
        assert report.bad_lines[0].text == "this is not json"
        assert "between" in report.bad_lines[2].reason
        assert report.records == 3
        await store.record("other", "loss", 1.0, step=9)
        await store.flush()
        assert path.read_bytes().startswith(original)  # only appended to
        assert await store.delete_run("other") == 1
    assert path.read_bytes() == original  # delete_run kept every unreadable line verbatim


async def test_a_keyed_batch_that_died_mid_write_is_cut_and_stored_once_on_retry(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.jsonl"
    batch = [MetricRecord("run", "loss", float(i), i) for i in range(50)]
    async with JsonlMetricsStore(path) as store:
        await store.record_many(batch[:10], idempotency_key="a")
    # Simulate a crash inside the next keyed write: its mark is on disk, and only part of
    # its records (whole lines, even) reached the data file.
    start = path.stat().st_size
    encoded = msgspec.json.Encoder().encode_lines(batch[10:])
    mark = b'{"key":"b","start":%d,"end":%d}\n' % (start, start + len(encoded))
    append(Path(f"{path}.keys"), mark)
    append(path, encoded[: len(encoded) // 2])
    async with JsonlMetricsStore(path) as store:
        assert path.stat().st_size == start  # the partial batch is gone
        await store.record_many(batch[10:], idempotency_key="b")  # the retry
        await store.record_many(batch[10:], idempotency_key="b")
        await store.record_many(batch[:10], idempotency_key="a")
        assert [r.step for r in await store.read("run")] == list(range(50))
    async with JsonlMetricsStore(path) as store:  # the void mark keeps "b" valid later on
        await store.record_many(batch[10:], idempotency_key="b")
        assert len(await store.read("run")) == 50


async def test_stores_follow_a_file_replaced_by_delete_run(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    async with JsonlMetricsStore(path) as first, JsonlMetricsStore(path) as second:
        await first.record("gone", "loss", 1.0, step=0)
        await second.record("kept", "loss", 1.0, step=0)
        await second.flush()
        assert await first.delete_run("gone") == 1
        await second.record("kept", "loss", 2.0, step=1)  # must land in the new file
        await second.flush()
        assert [r.step for r in await first.read("kept")] == [0, 1]


WRITER = textwrap.dedent(
    """
    import sys
    from crucible.metrics import JsonlMetricsStore, MetricRecord
    path, name = sys.argv[1], sys.argv[2]
    store = JsonlMetricsStore(path, max_batch=64)
    padding = {"padding": "x" * 3000}  # lines far beyond PIPE_BUF, batches of ~200 kB
    for i in range(40):
        store.sync.record_many(
            [MetricRecord(name, "m", float(j), i * 64 + j, metadata=padding) for j in range(64)]
        )
    store.sync.close()
    """
)


def test_writers_in_several_processes_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"p{n}"], env=env)
        for n in range(3)
    ]
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0]
    data = path.read_bytes()
    decoder = msgspec.json.Decoder(MetricRecord)
    records = [decoder.decode(raw) for raw in data.splitlines()]  # every line is whole
    for n in range(3):
        assert sorted(r.step for r in records if r.run_id == f"p{n}") == list(range(40 * 64))


async def test_a_metric_filter_never_misses_an_escaped_spelling(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    escaped = (
        b'{"run_id":"run","metric":"lo\\u0073s","value":7.0,"step":7,'
        b'"timestamp":"2025-01-01T00:00:00Z","metadata":{}}\n'
    )
    path.write_bytes(line(0) + escaped + line(1, run="other"))
    async with JsonlMetricsStore(path) as store:
        assert [r.step for r in await store.read("run", metric="loss")] == [0, 7]


async def test_a_filtered_read_reports_true_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    bad = b'{"run_id":"run","metric":"loss","value":"oops"}\n'
    path.write_bytes(line(0) + b"junk\n" + line(1) + bad + line(2))
    async with JsonlMetricsStore(path) as store:
        with pytest.warns(CorruptLinesWarning, match=r"line 4\b"):
            assert [r.step for r in await store.read("run", metric="loss")] == [0, 1, 2]


def test_a_script_that_forgets_close_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    script = (
        "import sys\n"
        "from crucible.metrics import JsonlMetricsStore\n"
        "store = JsonlMetricsStore(sys.argv[1], flush_interval=3600)\n"
        "for step in range(1000):\n"
        "    store.sync.record('run', 'loss', 1.0, step=step)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", script, str(path)], env=env, check=True, timeout=60)
    assert len(path.read_bytes().splitlines()) == 1000


async def test_a_write_that_fails_halfway_is_cut_back_and_retried_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crucible.metrics import StoreWriteError, _jsonl_file

    real_write_all = _jsonl_file._write_all
    failures: list[int] = []

    def disk_fills_once(fd: int, data: bytes) -> None:
        if not failures and len(data) > 1000:
            failures.append(fd)
            real_write_all(fd, data[: len(data) // 2])  # part of the batch reached the file
            raise OSError(28, "No space left on device")
        real_write_all(fd, data)

    monkeypatch.setattr(_jsonl_file, "_write_all", disk_fills_once)
    batch = [MetricRecord("run", "loss", float(i), i) for i in range(100)]
    async with JsonlMetricsStore(tmp_path / "m.jsonl", flush_interval=0.01) as store:
        await store.record_many(batch)
        try:
            await store.flush()
        except StoreWriteError:
            await store.flush()  # the retry's outcome
        assert failures, "the failure was not injected"
        assert await store.read("run") == batch
