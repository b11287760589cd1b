"""Actor round trips and casts: Crucible vs a naive anyio actor vs pykka, on asyncio and trio.

    python -m bench.actors [--quick]

The naive actor is what one writes directly on anyio memory object streams: a mailbox stream,
and a fresh request/reply stream pair per call. pykka is the established thread-based actor
library (ThreadingActor ask/tell). Every row is measured in this same process and run.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import pykka
from anyio.streams.memory import MemoryObjectSendStream

from crucible.actors import Actor, Request, handler, open_runtime

# -- Crucible ----------------------------------------------------------------------------------


class Inc(msgspec.Struct, frozen=True):
    n: int


class Get(Request[int], frozen=True):
    pass


class Counter(Actor[int]):
    async def init(self) -> int:
        return 0

    @handler
    def inc(self, msg: Inc) -> None:
        self.state += msg.n

    @handler
    def get(self, msg: Get) -> int:
        return self.state


# -- the naive anyio actor -----------------------------------------------------------------------

Envelope = tuple[Any, MemoryObjectSendStream[int] | None]


class NaiveActor:
    def __init__(self) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[Envelope](1024)
        self.state = 0

    async def run(self) -> None:
        async for message, reply in self.receive:
            if isinstance(message, Inc):
                self.state += message.n
            if reply is not None:
                await reply.send(self.state)

    async def call(self, message: Any) -> int:
        reply_send, reply_receive = anyio.create_memory_object_stream[int](1)
        async with reply_send, reply_receive:
            await self.send.send((message, reply_send))
            return await reply_receive.receive()

    async def cast(self, message: Any) -> None:
        await self.send.send((message, None))


# -- pykka --------------------------------------------------------------------------------------


class PykkaCounter(pykka.ThreadingActor):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.state = 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Inc):
            self.state += message.n
            return None
        return self.state


# -- measuring ----------------------------------------------------------------------------------


def _best(samples: list[float]) -> float:
    return max(samples)  # ops/s: the least disturbed repetition


async def _crucible(kind: str, n: int, callers: int) -> float:
    async with open_runtime() as rt:
        ref = await rt.spawn(Counter(), mailbox_size=1024)
        return await _drive(kind, n, callers, ref.call, ref.cast, lambda: ref.call(Get()))


async def _naive(kind: str, n: int, callers: int) -> float:
    actor = NaiveActor()
    async with anyio.create_task_group() as tg:
        tg.start_soon(actor.run)
        rate = await _drive(kind, n, callers, actor.call, actor.cast, lambda: actor.call(Get()))
        tg.cancel_scope.cancel()
    return rate


async def _drive(
    kind: str,
    n: int,
    callers: int,
    call: Callable[[Any], Awaitable[Any]],
    cast: Callable[[Any], Awaitable[None]],
    sync: Callable[[], Awaitable[Any]],
) -> float:
    message = Get()
    inc = Inc(1)
    per_caller = n // callers

    async def calls() -> None:
        for _ in range(per_caller):
            await call(message)

    start = time.perf_counter()
    if kind == "cast":
        for _ in range(n):
            await cast(inc)
        await sync()  # every cast has been handled once this returns
    elif callers == 1:
        await calls()
    else:
        async with anyio.create_task_group() as tg:
            for _ in range(callers):
                tg.start_soon(calls)
    return (per_caller * callers if kind == "call" else n) / (time.perf_counter() - start)


def _pykka(kind: str, n: int, callers: int) -> float:
    ref = PykkaCounter.start()
    try:
        per_caller = n // callers
        message, inc = Get(), Inc(1)

        def calls() -> None:
            for _ in range(per_caller):
                ref.ask(message)

        start = time.perf_counter()
        if kind == "cast":
            for _ in range(n):
                ref.tell(inc)
            ref.ask(message)
        else:
            threads = [threading.Thread(target=calls) for _ in range(callers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return (per_caller * callers if kind == "call" else n) / (time.perf_counter() - start)
    finally:
        ref.stop()


CASES = [("call", 1), ("call", 10), ("cast", 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer operations (a smoke run)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    sizes = {"call": 20_000 // scale, "cast": 400_000 // scale}
    repeat = 1 if args.quick else args.repeat

    header = f"{'backend':8} {'case':16} {'crucible/s':>12} {'naive/s':>12} {'pykka/s':>10}"
    print(header + f" {'vs naive':>9} {'vs pykka':>9}")
    pykka_rates = {
        case: _best([_pykka(case[0], sizes[case[0]] // 4, case[1]) for _ in range(repeat)])
        for case in CASES
    }
    for backend in ("asyncio", "trio"):
        for kind, callers in CASES:
            n = sizes[kind]
            ours = _best(
                [anyio.run(_crucible, kind, n, callers, backend=backend) for _ in range(repeat)]
            )
            naive = _best(
                [anyio.run(_naive, kind, n, callers, backend=backend) for _ in range(repeat)]
            )
            theirs = pykka_rates[(kind, callers)]
            label = f"{kind} x{callers}" if kind == "call" else "cast"
            print(
                f"{backend:8} {label:16} {ours:12,.0f} {naive:12,.0f} {theirs:10,.0f}"
                f" {ours / naive:8.2f}x {ours / theirs:8.2f}x"
            )
    print(f"(best of {repeat}; pykka runs on threads and is the same on both rows)")


if __name__ == "__main__":
    main()
