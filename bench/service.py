"""The metric service's ingest rate on loopback, against the store it writes to.

    python -m bench.service [--clients 8] [--batches 40] [--batch 1000]

One run, three rows, each with `--clients` concurrent writers sending `--batches` batches of
`--batch` metrics (different runs per client, steps in order):
- baseline: the same SQLite store in-process, `record_many` with `durable=True` (what the
  server does for each request, without HTTP, JSON or auth);
- API: `POST /api/v1/metrics/batch` to `python -m crucible.serve` (a subprocess: SQLite,
  auth on, rate limit off) from asyncio tasks with pre-encoded bodies; p50/p99 request
  latency;
- RemoteMetricsStore: one store per client thread, `sync.record_many` per batch then
  `flush()`; p50/p99 of the `record_many` call, which is what a training loop waits for.
Target (issue 8): >= 100,000 metrics/s through the API on SQLite. Timing never fails anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import msgspec

from crucible.metrics import MetricRecord, RemoteMetricsStore, SqliteMetricsStore
from crucible.testing import ServerProcess

START = datetime(2025, 1, 1, tzinfo=UTC)
METRICS = ["loss", "accuracy", "learning_rate", "grad_norm"]


def batch_points(client: int, index: int, size: int) -> list[dict[str, object]]:
    base = index * size
    return [
        {
            "metric": METRICS[i % 4],
            "value": 1.0 / (base + i + 1),
            "step": (base + i) // 4,
            "timestamp": (START + timedelta(microseconds=base + i)).isoformat(),
        }
        for i in range(size)
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def bench_baseline(directory: Path, clients: int, batches: int, size: int) -> dict[str, float]:
    records = [
        [
            [
                MetricRecord(f"client-{c}", p["metric"], p["value"], p["step"], START)  # type: ignore[arg-type]
                for p in batch_points(c, b, size)
            ]
            for b in range(batches)
        ]
        for c in range(clients)
    ]
    latencies: list[float] = []

    async def main() -> float:
        store = SqliteMetricsStore(directory / "baseline.db", durable=True)

        async def client(c: int) -> None:
            for batch in records[c]:
                t0 = time.perf_counter()
                await store.record_many(batch)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as group:
            for c in range(clients):
                group.start_soon(client, c)
        elapsed = time.perf_counter() - t0
        await store.close()
        return elapsed

    elapsed = anyio.run(main)
    return {
        "rate": clients * batches * size / elapsed,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


def bench_api(server: ServerProcess, clients: int, batches: int, size: int) -> dict[str, float]:
    bodies = [
        [
            msgspec.json.encode({"run_id": f"api-{c}", "metrics": batch_points(c, b, size)})
            for b in range(batches)
        ]
        for c in range(clients)
    ]
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}

    async def main() -> float:
        async with httpx.AsyncClient(
            base_url=server.url,
            headers=headers,
            timeout=60,
            limits=httpx.Limits(max_connections=clients),
        ) as http:

            async def client(c: int) -> None:
                for body in bodies[c]:
                    t0 = time.perf_counter()
                    response = await http.post("/api/v1/metrics/batch", content=body)
                    latencies.append(time.perf_counter() - t0)
                    assert response.status_code == 200, response.text

            t0 = time.perf_counter()
            async with anyio.create_task_group() as group:
                for c in range(clients):
                    group.start_soon(client, c)
            return time.perf_counter() - t0

    elapsed = anyio.run(main)
    return {
        "rate": clients * batches * size / elapsed,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


def bench_remote(
    server: ServerProcess, directory: Path, clients: int, batches: int, size: int
) -> dict[str, float]:
    records = [
        [
            [
                MetricRecord(f"remote-{c}", p["metric"], p["value"], p["step"], START)  # type: ignore[arg-type]
                for p in batch_points(c, b, size)
            ]
            for b in range(batches)
        ]
        for c in range(clients)
    ]
    stores = [
        RemoteMetricsStore(server.url, server.token, buffer_dir=directory / f"buffer-{c}")
        for c in range(clients)
    ]
    latencies: list[float] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        mine = []
        for batch in records[c]:
            t0 = time.perf_counter()
            stores[c].sync.record_many(batch)
            mine.append(time.perf_counter() - t0)
        stores[c].sync.flush()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    for store in stores:
        assert store.buffered == 0 and store.rejected == 0
        store.sync.close()
    return {
        "rate": clients * batches * size / elapsed,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


def count_on_server(server: ServerProcess, prefix: str, clients: int) -> int:
    headers = {"Authorization": f"Bearer {server.token}"}
    total = 0
    for c in range(clients):
        for metric in METRICS:
            response = httpx.get(
                f"{server.url}/api/v1/runs/{prefix}-{c}/metrics/{metric}/stats", headers=headers
            )
            total += response.json()["count"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.service")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40, help="batches per client")
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(
        f"{args.clients} clients x {args.batches} batches x {args.batch} metrics, "
        f"load average {load:.1f} on {os.cpu_count()} cores",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        baseline = bench_baseline(directory, args.clients, args.batches, args.batch)
        server_dir = directory / "server"
        server_dir.mkdir()
        server = ServerProcess(server_dir, extra_args=("--rate-limit", "0", "--log-level", "info"))
        server.start()
        try:
            api = bench_api(server, args.clients, args.batches, args.batch)
            remote = bench_remote(server, directory, args.clients, args.batches, args.batch)
            expected = args.clients * args.batches * args.batch
            for prefix in ("api", "remote"):
                stored = count_on_server(server, prefix, args.clients)
                assert stored == expected, f"{prefix}: {stored} stored, {expected} sent"
        finally:
            server.stop()

    def row(name: str, result: dict[str, float], note: str) -> str:
        ratio = result["rate"] / baseline["rate"]
        return (
            f"| {name} | {result['rate']:,.0f} | {ratio:.2f}x | {result['p50'] * 1e3:.1f} ms "
            f"| {result['p99'] * 1e3:.1f} ms | {note} |"
        )

    print("| path | metrics/s | vs baseline | p50 | p99 | latency of |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(row("baseline: SqliteMetricsStore(durable=True) in-process", baseline, "record_many"))
    print(row("API: POST /api/v1/metrics/batch", api, "HTTP request"))
    print(row("RemoteMetricsStore (sync.record_many + flush)", remote, "record_many call"))
    target = "met" if api["rate"] >= 100_000 else "NOT met"
    print(
        f"\ntarget >= 100,000 metrics/s through the API: {target} "
        f"({api['rate']:,.0f}); every point was counted back on the server"
    )


if __name__ == "__main__":
    main()
