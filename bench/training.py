"""Training benchmarks: ``python -m bench.training``.

1. Local backend throughput: tokens/s of a train step on the default model, three ways:
   the old hand-written transformer + LoRA (bench/_handwritten.py, same shape; the baseline
   the transformers + peft path must stay within 1.25x of), the transformers + peft engine
   called directly (plain torch, same thread), and through LocalBackend's async two-stage API
   (worker thread, futures): the cost of keeping torch off the event loop.
2. Session overhead: 200 train steps through the supervised Session actor vs calling a
   50 ms-per-op backend directly (bench/session_overhead.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio
import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from tinker import types

from bench._handwritten import LoraConfig as HandLora
from bench._handwritten import ModelConfig, TinyTransformer, add_lora, lora_parameters
from crucible.recipes._tasks import default_task_split
from crucible.training.backends.local import ByteTokenizer, LocalBackend, LocalBackendConfig
from crucible.training.backends.local._engine import LocalEngine

ADAM = types.AdamParams(learning_rate=3e-3)


def chat_batch(size: int) -> list[types.Datum]:
    """``size`` default-task conversations in a simple chat markup, loss on the answer only."""
    tokenizer = ByteTokenizer()
    data = []
    for example in default_task_split().train[:size]:
        prompt = tokenizer.encode(f"<|bos|><|user|>{example.prompt}<|end|><|assistant|>")
        answer = tokenizer.encode(f"{example.answer}<|end|>")
        tokens = prompt + answer
        weights = [0.0] * (len(prompt) - 1) + [1.0] * len(answer)
        data.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(tokens[:-1]),
                loss_fn_inputs={
                    "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:])),
                    "weights": types.TensorData.from_numpy(np.asarray(weights, np.float32)),
                },
            )
        )
    return data


def tokens_in(data: Sequence[types.Datum]) -> int:
    return sum(datum.model_input.length for datum in data)


async def measure(
    modes: Mapping[str, Callable[[], Awaitable[None]]], steps: int, rounds: int
) -> dict[str, float]:
    """Median seconds per op of each mode over ``rounds`` rounds of ``steps`` ops.

    Modes take turns within every round, so a load spike from other processes on the shared
    machine hits all of them alike instead of skewing one."""
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode, run_op in modes.items():
            started = time.perf_counter()
            for _ in range(steps):
                await run_op()
            samples[mode].append((time.perf_counter() - started) / steps)
    return {mode: statistics.median(values) for mode, values in samples.items()}


async def local_throughput(batch_size: int, steps: int, rounds: int, root: str) -> dict[str, float]:
    """Seconds per op for each mode; the direct (baseline) modes call the engine inline."""
    data = chat_batch(batch_size)
    # the shape the hand-written model had (its byte tokenizer, GPT-2 layout), like for like
    config = LocalBackendConfig(
        base_model="crucible/tiny-2l-128", checkpoint_root=root, run_id="bench"
    )
    engine = LocalEngine(config)  # the baseline: plain torch in this thread

    hand = handwritten_step(data)

    async def direct_fwd_bwd() -> None:
        engine.forward_backward(data, "cross_entropy")
        engine.optimizer.zero_grad(set_to_none=True)

    async def direct_train_step() -> None:
        engine.forward_backward(data, "cross_entropy")
        engine.optim_step(ADAM)

    async with LocalBackend(config) as backend:

        async def backend_fwd_bwd() -> None:
            await (await backend.forward_backward(data))

        async def backend_train_step() -> None:
            fwd_bwd = await backend.forward_backward(data)
            optim = await backend.optim_step(ADAM)  # pipelined, as a recipe does
            await fwd_bwd
            await optim

        modes = {
            "train step, hand-written model (baseline)": hand,
            "forward_backward, direct (baseline)": direct_fwd_bwd,
            "forward_backward, LocalBackend": backend_fwd_bwd,
            "train step, direct (baseline)": direct_train_step,
            "train step, LocalBackend": backend_train_step,
        }
        await measure(modes, steps=2, rounds=1)  # warm up
        return await measure(modes, steps, rounds)


def handwritten_step(data: Sequence[types.Datum]) -> Callable[[], Awaitable[None]]:
    """The removed hand-written path: the same shape as crucible/tiny-2l-128 (seeded weights:
    a step's cost does not depend on their values), LoRA r16 on q/k/v/o/up/down, the same
    weighted cross-entropy and AdamW, one train step per call."""
    torch.manual_seed(0)
    model = TinyTransformer(ModelConfig(vocab_size=264))
    add_lora(model, HandLora(), torch.Generator().manual_seed(0))
    parameters = list(lora_parameters(model).values())
    optimizer = torch.optim.AdamW(parameters, lr=3e-3, foreach=False)
    width = max(d.model_input.length for d in data)
    inputs = torch.full((len(data), width), 256, dtype=torch.int64)
    targets = torch.zeros((len(data), width), dtype=torch.int64)
    weights = torch.zeros((len(data), width))
    for row, datum in enumerate(data):
        n = datum.model_input.length
        inputs[row, :n] = torch.tensor(datum.model_input.to_ints())
        targets[row, :n] = datum.loss_fn_inputs["target_tokens"].to_torch().flatten()
        weights[row, :n] = datum.loss_fn_inputs["weights"].to_torch().flatten()

    async def step() -> None:
        logprobs = torch.log_softmax(model(inputs).float(), dim=-1)
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        (-(picked * weights).sum()).backward()  # type: ignore[no-untyped-call]
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
        torch.nn.utils.clip_grads_with_norm_(parameters, 1.0, norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Crucible training benchmarks")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="ops per mode per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as LocalBackend's worker thread does

    with tempfile.TemporaryDirectory() as root:
        results = anyio.run(local_throughput, args.batch_size, args.steps, args.rounds, root)
    tokens = tokens_in(chat_batch(args.batch_size))
    table = Table(
        title="local backend, crucible/tiny-2l-128 (transformers GPT-2 + peft), LoRA r16, "
        f"batch {args.batch_size} "
        f"({tokens} tokens), median of {args.rounds} rounds x {args.steps} ops, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )
    for column in ("mode", "ms/op", "tokens/s", "vs baseline"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, seconds in results.items():
        kind = mode.split(",")[0]
        baseline = results[
            "train step, hand-written model (baseline)"
            if mode == "train step, direct (baseline)"
            else kind + ", direct (baseline)"
            if "hand-written" not in mode
            else mode
        ]
        table.add_row(
            mode, f"{seconds * 1e3:.1f}", f"{tokens / seconds:,.0f}", f"{seconds / baseline:.3f}x"
        )
    Console().print(table)
    session_overhead()


def session_overhead(steps: int = 200) -> None:
    """200 train steps through the Session actor against a backend that takes 50 ms per op,
    vs the same backend called directly (bench/session_overhead.py)."""
    from bench.session_overhead import run

    run(steps)


if __name__ == "__main__":
    main()
