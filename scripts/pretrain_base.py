"""Pretrain the shipped base model ``crucible/tiny-2l-128`` on generated plain text.

    python scripts/pretrain_base.py   # writes backends/local/weights/tiny-2l-128.pt
    python scripts/pretrain_base.py --check-seconds 60   # LoRA on it vs on a random base

The corpus is the plain-text forms of the train side of the default tasks (2-digit addition
and word reversal, ``crucible.recipes._tasks`` with split seed 0), so held-out test problems are
never seen. Nothing is downloaded. Deterministic under ``--seed`` with a fixed thread count
(``--threads``, default 2): the same command gives bitwise-identical weights on the same
torch build. The run takes about 4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np
import torch
import torch.nn.functional as F
from tinker import types

from crucible.recipes._tasks import default_task_split
from crucible.training.backends.local._base_models import (
    DEFAULT_BASE_MODEL,
    base_model_spec,
    save_base_weights,
)
from crucible.training.backends.local._model import TinyTransformer, count_parameters, init_weights
from crucible.training.backends.local._tokenizer import ByteTokenizer

DEFAULT_OUTPUT = (
    Path(__file__).resolve().parent.parent
    / "crucible/training/backends/local/weights/tiny-2l-128.pt"
)


def build_documents(tokenizer: ByteTokenizer) -> list[list[int]]:
    """Each plain-text form of each train problem, as ``<|bos|> text <|eos|>``."""
    split = default_task_split(split_seed=0)
    return [
        [
            tokenizer.bos_token_id,
            *tokenizer.encode(text, allow_special=False),
            tokenizer.eos_token_id,
        ]
        for example in split.train
        for text in example.plain_texts()
    ]


def packed_rows(documents: list[list[int]], length: int, rng: random.Random) -> torch.Tensor:
    """One epoch: documents shuffled, concatenated and cut into rows of ``length + 1`` tokens."""
    order = list(range(len(documents)))
    rng.shuffle(order)
    stream = [token for index in order for token in documents[index]]
    rows = len(stream) // (length + 1)
    return torch.tensor(stream[: rows * (length + 1)]).view(rows, length + 1)


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def chat_datum(tokenizer: ByteTokenizer, prompt: str, answer: str) -> types.Datum:
    """A simple chat rendering (loss on the answer only), close to what a renderer produces."""
    prompt_ids = tokenizer.encode(f"<|bos|><|user|>{prompt}<|end|><|assistant|>")
    answer_ids = tokenizer.encode(f"{answer}<|end|>")
    tokens = prompt_ids + answer_ids
    weights = [0.0] * (len(prompt_ids) - 1) + [1.0] * len(answer_ids)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:])),
            "weights": types.TensorData.from_numpy(np.asarray(weights, np.float32)),
        },
    )


async def lora_check(base_model: str, seconds: float, root: str) -> str:
    """Fine-tune LoRA r16 (alpha 32, all projections) at lr 3e-3, batch 64, for ``seconds``
    on the chat form of the default tasks, then greedy exact match on 200 held-out problems."""
    from crucible.training.backends.local import LocalBackend, LocalBackendConfig, LoraConfig

    split = default_task_split(split_seed=0)
    config = LocalBackendConfig(
        base_model=base_model,
        lora=LoraConfig(rank=16, alpha=32.0),
        checkpoint_root=root,
        run_id="check",
    )
    adam = types.AdamParams(learning_rate=3e-3)
    async with LocalBackend(config) as backend:
        tokenizer = backend.tokenizer
        data = [chat_datum(tokenizer, e.prompt, e.answer) for e in split.train]
        started, step, loss = time.perf_counter(), 0, float("nan")
        while time.perf_counter() - started < seconds:
            batch = data[(step * 64) % len(data) :][:64]
            fwd_bwd = await backend.forward_backward(batch)
            optim = await backend.optim_step(adam)
            result = await fwd_bwd
            await optim
            loss = result.metrics["loss:sum"] / result.metrics["weights:sum"]
            step += 1
        sampler = await (await backend.sampling_client())
        greedy = types.SamplingParams(max_tokens=8, temperature=0, stop=["<|end|>"])
        correct: dict[str, list[bool]] = {"addition": [], "reversal": []}
        for task in correct:
            for example in [e for e in split.test if e.task == task][:100]:
                prompt = tokenizer.encode(f"<|bos|><|user|>{example.prompt}<|end|><|assistant|>")
                response = await (
                    await sampler.sample(types.ModelInput.from_ints(prompt), 1, greedy)
                )
                text = tokenizer.decode(response.sequences[0].tokens).removesuffix("<|end|>")
                correct[task].append(example.is_correct(text))
    scores = ", ".join(f"{task} {100 * sum(v) / len(v):.0f}%" for task, v in correct.items())
    return (
        f"{base_model}: {step} steps in {seconds:.0f}s, loss/token {loss:.3f}, exact match {scores}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--check-seconds",
        type=float,
        default=0.0,
        help="instead of pretraining, fine-tune LoRA this long on the shipped base and on the "
        "random base, and report held-out exact match",
    )
    args = parser.parse_args(argv)
    if args.check_seconds > 0:
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as root:
            for base in (DEFAULT_BASE_MODEL, f"{DEFAULT_BASE_MODEL}-random"):
                print(anyio.run(lora_check, base, args.check_seconds, root), flush=True)
        return 0

    torch.set_num_threads(args.threads)  # reductions can differ with the thread count
    torch.set_flush_denormal(True)  # denormals slow CPU matmuls by 20-45% late in training
    tokenizer = ByteTokenizer()
    spec = base_model_spec(DEFAULT_BASE_MODEL)
    model = TinyTransformer(spec.config)
    init_weights(model, torch.Generator().manual_seed(args.seed))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01
    )
    documents = build_documents(tokenizer)
    rng = random.Random(args.seed)
    context = spec.config.context_length
    print(
        f"pretraining {DEFAULT_BASE_MODEL}: {count_parameters(model.parameters())} params, "
        f"{len(documents)} documents, {args.steps} steps of {args.batch_size}x{context} tokens",
        flush=True,
    )

    rows = packed_rows(documents, context, rng)
    cursor = 0
    started = time.perf_counter()
    for step in range(args.steps):
        if cursor + args.batch_size > len(rows):
            rows, cursor = packed_rows(documents, context, rng), 0
        batch = rows[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps - 1:
            elapsed = time.perf_counter() - started
            print(f"step {step:5d}  loss {loss.item():.4f}  {elapsed:7.1f}s", flush=True)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_base_weights(model, DEFAULT_BASE_MODEL, args.output)
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    elapsed = time.perf_counter() - started
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes, sha256 {digest})")
    print(f"training took {elapsed:.1f}s with {args.threads} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
