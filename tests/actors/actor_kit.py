"""Small actors and helpers shared by the runtime tests."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import msgspec

from crucible.actors import Actor, Request, Runtime, RuntimeEvent, handler


class Add(msgspec.Struct, frozen=True):
    n: int


class Get(Request[int], frozen=True):
    pass


class Crash(Request[None], frozen=True):
    pass


class StopNormally(Request[None], frozen=True):
    pass


class Echo(Request[tuple[int, int]], frozen=True):
    sender: int
    seq: int


class Hold(Request[str], frozen=True):
    """Block the handler until the gate opens."""

    tag: str = ""


class Note(msgspec.Struct, frozen=True):
    value: int


class Counter(Actor[int]):
    async def init(self) -> int:
        return 0

    @handler
    def add(self, msg: Add) -> None:
        self.state += msg.n

    @handler
    async def get(self, msg: Get) -> int:
        return self.state

    @handler
    def crash(self, msg: Crash) -> None:
        raise ValueError("boom")

    @handler
    def stop_normally(self, msg: StopNormally) -> None:
        self.stop()


class Recorder(Actor[list[object]]):
    """Records every message it handles; ``Hold`` parks the handler until ``gate`` is set."""

    def __init__(self, gate: anyio.Event | None = None, entered: anyio.Event | None = None):
        self.gate = gate or anyio.Event()
        self.entered = entered or anyio.Event()

    async def init(self) -> list[object]:
        return []

    @handler
    async def hold(self, msg: Hold) -> str:
        self.entered.set()
        await self.gate.wait()
        self.state.append(msg)
        return msg.tag

    @handler
    def echo(self, msg: Echo) -> tuple[int, int]:
        self.state.append(msg)
        return (msg.sender, msg.seq)

    @handler
    def note(self, msg: Note) -> None:
        self.state.append(msg.value)

    @handler
    def get(self, msg: Get) -> int:
        return len(self.state)


class Seen(Request[list[object]], frozen=True):
    pass


class Logged(Actor[None]):
    """Appends ``start:<id>`` / ``stop:<id>`` to a shared log, to assert order."""

    def __init__(self, ident: str, log: list[str]) -> None:
        self.ident = ident
        self.log = log

    async def init(self) -> None:
        self.log.append(f"start:{self.ident}")

    async def terminate(self, reason: object, state: None) -> None:
        self.log.append(f"stop:{self.ident}")

    @handler
    def crash(self, msg: Crash) -> None:
        raise ValueError(f"{self.ident} crashed")

    @handler
    def stop_normally(self, msg: StopNormally) -> None:
        self.stop()

    @handler
    def get(self, msg: Get) -> int:
        return 0


class EventWatcher:
    """Collects RuntimeEvents and lets a test wait for the n-th one of a kind (no sleeping)."""

    def __init__(self, runtime: Runtime) -> None:
        self.events: list[RuntimeEvent] = []
        self._changed = anyio.Event()
        runtime.add_listener(self._on_event)

    def _on_event(self, event: RuntimeEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    def of(self, kind: str) -> list[RuntimeEvent]:
        return [e for e in self.events if e.kind == kind]

    async def wait_for(self, kind: str, count: int) -> list[RuntimeEvent]:
        with anyio.fail_after(10):
            while len(self.of(kind)) < count:
                await self._changed.wait()
        return self.of(kind)


def factory(cls: Callable[..., Actor[object]], *args: object) -> Callable[[], Actor[object]]:
    return lambda: cls(*args)
