"""``python -m crucible.run``: a small supervised demo of the runtime.

Until the fine-tuning recipe lands, this shows the idea Crucible is built on: a worker that
trains (here: gradient descent on a toy quadratic) crashes at random steps; its supervisor
restarts it; it resumes from the last checkpoint kept by a separate actor and replays; the run
ends with exactly the result of a run without crashes.
"""

from __future__ import annotations

import argparse
import random
import sys

import anyio
import msgspec

from crucible.actors import (
    Actor,
    Backoff,
    ChildSpec,
    Request,
    Runtime,
    RuntimeEvent,
    handler,
    open_runtime,
)

TARGET = 3.0
LEARNING_RATE = 0.1


class Save(msgspec.Struct, frozen=True):
    step: int
    weight: float


class Latest(Request[tuple[int, float]], frozen=True):
    pass


class Checkpoints(Actor[tuple[int, float]]):
    """Keeps the latest (step, weight); outlives worker crashes."""

    async def init(self) -> tuple[int, float]:
        return (0, 0.0)

    @handler
    def save(self, msg: Save) -> None:
        self.state = (msg.step, msg.weight)

    @handler
    def latest(self, msg: Latest) -> tuple[int, float]:
        return self.state


class Train(Request[float], frozen=True):
    until: int


class Worker(Actor[tuple[int, float]]):
    """Takes optimisation steps, checkpoints every ``every`` steps, and fails at random."""

    def __init__(self, crash_rate: float, rng: random.Random, every: int) -> None:
        self.crash_rate = crash_rate
        self.rng = rng
        self.every = every

    async def init(self) -> tuple[int, float]:
        checkpoints = self.runtime.whereis("checkpoints")
        assert checkpoints is not None
        step, weight = await checkpoints.call(Latest())
        if step:
            print(f"  worker restarted: resuming from the checkpoint at step {step}")
        return step, weight

    @handler
    async def train(self, msg: Train) -> float:
        checkpoints = self.runtime.whereis("checkpoints")
        assert checkpoints is not None
        step, weight = self.state
        while step < msg.until:
            if self.rng.random() < self.crash_rate:
                raise RuntimeError(f"backend call failed at step {step + 1}")
            weight -= LEARNING_RATE * 2 * (weight - TARGET)  # d/dw (w - target)^2
            step += 1
            self.state = (step, weight)
            if step % self.every == 0:
                await checkpoints.cast(Save(step, weight))
                print(f"  step {step:3d}  loss {(weight - TARGET) ** 2:.6f}  (checkpoint)")
        return weight


async def run(steps: int, crash_rate: float, seed: int) -> float:
    rng = random.Random(seed)
    async with open_runtime() as rt:
        rt.add_listener(_report)
        sup = await rt.supervise(
            [
                ChildSpec("checkpoints", Checkpoints, name="checkpoints"),
                ChildSpec("worker", lambda: Worker(crash_rate, rng, every=5), name="worker"),
            ],
            strategy="one_for_one",
            max_restarts=50,
            max_seconds=10,
            backoff=Backoff(initial=0.001, maximum=0.05, seed=seed),
        )
        while True:
            worker = rt.whereis("worker")
            if worker is None:  # between a crash and its restart
                await _restarted(rt)
                continue
            try:
                return await worker.call(Train(steps), timeout=30)
            except Exception as exc:
                print(f"  the call failed ({type(exc).__name__}); the supervisor restarts it")
            finally:
                if not sup.ref.alive:
                    raise SystemExit("the supervisor gave up: too many restarts")


async def _restarted(rt: Runtime) -> None:
    """Wait for the next restart event."""
    event = anyio.Event()

    def listener(e: RuntimeEvent) -> None:
        if e.kind == "restarted":
            event.set()

    rt.add_listener(listener)
    try:
        await event.wait()
    finally:
        rt.remove_listener(listener)


def _report(event: RuntimeEvent) -> None:
    if event.kind == "crashed":
        print(f"  {event.actor} crashed: {event.reason}")
    elif event.kind == "restarted":
        print(f"  {event.supervisor} restarted {event.actor} after {event.delay:.3f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crucible.run", description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--crash-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    print(f"Crucible demo: {args.steps} steps, a crash in {args.crash_rate:.0%} of steps")
    with_faults = anyio.run(run, args.steps, args.crash_rate, args.seed, backend=args.backend)
    print("Same run without crashes:")
    without = anyio.run(run, args.steps, 0.0, args.seed, backend=args.backend)
    same = with_faults == without
    print(
        f"final weight with crashes {with_faults!r}, without {without!r}: "
        f"{'identical' if same else 'DIFFERENT'}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
