"""The cost of Tinker's wire protocol: ``python -m bench.tinker``.

A pipelined train step (forward_backward, then optim_step submitted before the first result
is awaited) on the local backend called directly (the baseline), and the same step through the
tinker backend: the real SDK, HTTP on loopback (protobuf bodies, long-polled futures) to the
local Tinker-compatible server, which runs the same LocalBackend. Both train the same model
on the same batch; modes take turns in every round so machine load hits both alike.

Besides wall time, each mode's process CPU time per step (all threads: torch, the SDK's, the
server's) is measured: the protocol's cost in CPU does not move with the machine's load the way
wall time does on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping

import anyio
import torch
from rich.console import Console
from rich.table import Table

from bench.training import ADAM, chat_batch, measure, tokens_in
from crucible.tinker_server import ServerConfig, running_server
from crucible.training import TinkerBackend, TinkerBackendConfig
from crucible.training.backends.local import (
    DEFAULT_BASE_MODEL,
    LocalBackend,
    LocalBackendConfig,
    LoraConfig,
)

API_KEY = "tml-bench"
RANK = 16


async def cpu_per_step(
    modes: Mapping[str, Callable[[], Awaitable[None]]], steps: int, rounds: int
) -> dict[str, float]:
    """Median process CPU seconds per step of each mode (modes take turns, as in measure)."""
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode, run_step in modes.items():
            started = time.process_time()
            for _ in range(steps):
                await run_step()
            samples[mode].append((time.process_time() - started) / steps)
    return {mode: statistics.median(values) for mode, values in samples.items()}


async def compare(
    base_url: str, root: str, base_model: str, batch_size: int, steps: int, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    data = chat_batch(batch_size)
    local_config = LocalBackendConfig(
        base_model=base_model,
        lora=LoraConfig(rank=RANK, alpha=2.0 * RANK),
        seed=0,
        checkpoint_root=root,
        run_id="bench",
    )
    remote_config = TinkerBackendConfig(
        base_model=base_model,
        lora_rank=RANK,
        seed=0,
        base_url=base_url,
        api_key=API_KEY,
    )
    async with LocalBackend(local_config) as local, TinkerBackend(remote_config) as remote:

        async def local_step() -> None:
            fwd_bwd = await local.forward_backward(data)
            optim = await local.optim_step(ADAM)
            await fwd_bwd
            await optim

        async def remote_step() -> None:
            fwd_bwd = await remote.forward_backward(data)
            optim = await remote.optim_step(ADAM)
            await fwd_bwd
            await optim

        modes = {
            "LocalBackend (baseline)": local_step,
            "TinkerBackend -> loopback server": remote_step,
        }
        await measure(modes, steps=2, rounds=1)  # warm up: connection, session, first model
        return await measure(modes, steps, rounds), await cpu_per_step(modes, steps, rounds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="train steps per mode per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--client-config",
        default="{}",
        help="JSON merged into the server's /client/config (e.g. use_pyqwest_transport)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        config = ServerConfig(
            port=0, root=root, api_keys={API_KEY}, client_config=json.loads(args.client_config)
        )
        with running_server(config) as server:
            results, cpu = anyio.run(
                compare,
                server.base_url,
                root,
                args.base_model,
                args.batch_size,
                args.steps,
                args.rounds,
            )
    tokens = tokens_in(chat_batch(args.batch_size))
    baseline = results["LocalBackend (baseline)"]
    table = Table(
        title=f"train step, {args.base_model}, LoRA r{RANK}, batch {args.batch_size} "
        f"({tokens} tokens), median of {args.rounds} rounds x {args.steps} steps, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )
    for column in ("mode", "ms/step", "tokens/s", "vs local", "CPU ms/step", "CPU vs local"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    cpu_baseline = cpu["LocalBackend (baseline)"]
    for mode, seconds in results.items():
        table.add_row(
            mode,
            f"{seconds * 1e3:.1f}",
            f"{tokens / seconds:,.0f}",
            f"{seconds / baseline:.2f}x",
            f"{cpu[mode] * 1e3:.1f}",
            f"{cpu[mode] / cpu_baseline:.2f}x",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
