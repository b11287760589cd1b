"""Sampling benchmark: ``python -m bench.sampling``.

Generated tokens/s for 200 default-task prompts x 12 new tokens (greedy, no early stop), two
ways on the same model and weights: one prompt at a time re-running the whole sequence for
every new token, without a KV cache (the baseline: how the local backend sampled before), and
the local backend's sampling client with all requests submitted before any is awaited, which
it decodes as batches through the KV cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import anyio
import torch
from tinker import types

from crucible.recipes._tasks import default_task_split
from crucible.training.backends.local import LocalBackend, LocalBackendConfig
from crucible.training.backends.local._engine import LocalEngine


def prompts(count: int, tokenizer: LocalBackend) -> list[list[int]]:
    tok = tokenizer.tokenizer
    return [
        tok.encode(f"<|bos|><|user|>{example.prompt}<|end|><|assistant|>")
        for example in default_task_split().test[:count]
    ]


@torch.no_grad()
def one_at_a_time(engine: LocalEngine, batch: list[list[int]], new_tokens: int) -> int:
    """The baseline: each prompt alone, the full sequence re-run for every new token."""
    generated = 0
    for prompt in batch:
        tokens = list(prompt)
        for _ in range(new_tokens):
            logits = engine.model(input_ids=torch.tensor([tokens]), use_cache=False).logits
            tokens.append(int(logits[0, -1].argmax()))
            generated += 1
    return generated


async def batched(backend: LocalBackend, batch: list[list[int]], new_tokens: int) -> int:
    # stop on a token id no prompt produces: every row generates exactly new_tokens tokens
    params = types.SamplingParams(max_tokens=new_tokens, temperature=0.0, stop=[-1])
    client = await (await backend.sampling_client())
    futures = [await client.sample(types.ModelInput.from_ints(p), 1, params) for p in batch]
    responses = [await future for future in futures]
    return sum(len(r.sequences[0].tokens) for r in responses)


async def run(count: int, new_tokens: int, root: str) -> None:
    config = LocalBackendConfig(checkpoint_root=root, run_id="bench")
    async with LocalBackend(config) as backend:
        batch = prompts(count, backend)
        await batched(backend, batch[:8], 2)  # warm up
        started = time.perf_counter()
        fast_tokens = await batched(backend, batch, new_tokens)
        fast = time.perf_counter() - started
    engine = LocalEngine(config)
    one_at_a_time(engine, batch[:2], 2)  # warm up
    started = time.perf_counter()
    slow_tokens = one_at_a_time(engine, batch, new_tokens)
    slow = time.perf_counter() - started
    print(
        f"sampling {count} prompts x {new_tokens} new tokens, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    slow_rate, fast_rate = slow_tokens / slow, fast_tokens / fast
    print(f"  one at a time, no KV cache (baseline): {slow_rate:9,.0f} tokens/s ({slow:.2f} s)")
    print(f"  batched, KV-cached (LocalBackend):     {fast_rate:9,.0f} tokens/s ({fast:.2f} s)")
    print(f"  speed-up: {(fast_tokens / fast) / (slow_tokens / slow):.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Crucible sampling benchmark")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        anyio.run(run, args.prompts, args.new_tokens, root)


if __name__ == "__main__":
    main()
