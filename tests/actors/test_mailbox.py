"""Bounded mailboxes: every overflow policy, back-pressure order, no task per cast; timers."""

from __future__ import annotations

import anyio
import pytest
import sniffio

from crucible.actors import MailboxFull, Overflow, open_runtime

from .actor_kit import Get, Hold, Note, Recorder

pytestmark = pytest.mark.anyio


async def _blocked_recorder(rt, policy: Overflow, size: int):  # type: ignore[no-untyped-def]
    """A Recorder busy in a Hold handler, so its mailbox fills up."""
    recorder = Recorder()
    ref = await rt.spawn(recorder, mailbox_size=size, overflow=policy)
    hold = anyio.Event()

    async def hold_call() -> None:
        await ref.call(Hold("h"), timeout=None)
        hold.set()

    rt._tg.start_soon(hold_call)
    await recorder.entered.wait()
    return recorder, ref, hold


def _notes(recorder: Recorder) -> list[int]:
    return [m for m in recorder.state if isinstance(m, int)]


async def test_block_policy_parks_senders_and_keeps_their_order() -> None:
    async with open_runtime() as rt:
        recorder, ref, hold = await _blocked_recorder(rt, "block", 3)
        for i in range(3):
            await ref.cast(Note(i))
        with pytest.raises(MailboxFull):
            ref.cast_nowait(Note(99))  # cast_nowait never waits
        async with anyio.create_task_group() as tg:

            async def sender() -> None:
                for i in range(3, 10):
                    await ref.cast(Note(i))  # parks until the actor frees a slot

            tg.start_soon(sender)
            await anyio.wait_all_tasks_blocked()
            assert ref.queued == 3  # the sender is parked, nothing was dropped
            recorder.gate.set()
        await hold.wait()
        assert await ref.call(Get()) == 11  # Hold + 10 notes
        assert _notes(recorder) == list(range(10))
        assert ref.dropped == 1  # only the refused cast_nowait


async def test_block_policy_call_timeout_covers_waiting_for_room() -> None:
    async with open_runtime() as rt:
        recorder, ref, _ = await _blocked_recorder(rt, "block", 1)
        await ref.cast(Note(0))
        with pytest.raises(TimeoutError):
            await ref.call(Get(), timeout=0.05)
        recorder.gate.set()
        assert await ref.call(Get()) == 2
        assert _notes(recorder) == [0]  # the timed-out request was withdrawn, never delivered


async def test_drop_newest_discards_new_casts_and_refuses_new_calls() -> None:
    async with open_runtime() as rt:
        recorder, ref, _ = await _blocked_recorder(rt, "drop_newest", 2)
        for i in range(5):
            await ref.cast(Note(i))
        with pytest.raises(MailboxFull, match="drop_newest"):
            await ref.call(Get())
        assert ref.dropped == 4
        recorder.gate.set()
        await anyio.wait_all_tasks_blocked()  # let the actor drain its mailbox
        assert await ref.call(Get()) == 3
        assert _notes(recorder) == [0, 1]


async def test_drop_oldest_keeps_the_newest_and_tells_dropped_callers() -> None:
    async with open_runtime() as rt:
        recorder, ref, _ = await _blocked_recorder(rt, "drop_oldest", 2)
        outcome: list[str] = []

        async def doomed_call() -> None:
            try:
                await ref.call(Get())
            except MailboxFull:
                outcome.append("dropped")

        async with anyio.create_task_group() as tg:
            tg.start_soon(doomed_call)
            await anyio.wait_all_tasks_blocked()
            for i in range(4):
                await ref.cast(Note(i))
        assert outcome == ["dropped"]
        assert ref.dropped == 3
        recorder.gate.set()
        await anyio.wait_all_tasks_blocked()
        assert await ref.call(Get()) == 3
        assert _notes(recorder) == [2, 3]


async def test_fail_policy_raises_mailbox_full() -> None:
    async with open_runtime() as rt:
        recorder, ref, _ = await _blocked_recorder(rt, "fail", 2)
        await ref.cast(Note(0))
        await ref.cast(Note(1))
        with pytest.raises(MailboxFull, match=r"mailbox full \(2 messages, policy 'fail'\)"):
            await ref.cast(Note(2))
        recorder.gate.set()
        await anyio.wait_all_tasks_blocked()
        assert await ref.call(Get()) == 3


async def test_unknown_policy_and_bad_size_are_refused() -> None:
    async with open_runtime() as rt:
        with pytest.raises(ValueError, match="unknown overflow policy"):
            await rt.spawn(Recorder(), overflow="spill")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="maxsize must be >= 1"):
            await rt.spawn(Recorder(), mailbox_size=0)


def _task_count() -> int:
    if sniffio.current_async_library() == "asyncio":
        import asyncio

        return len(asyncio.all_tasks())
    import trio

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(c) for n in task.child_nurseries for c in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


async def test_a_cast_allocates_no_task() -> None:
    async with open_runtime() as rt:
        recorder, ref, _ = await _blocked_recorder(rt, "block", 2000)
        before = _task_count()
        for i in range(1000):
            await ref.cast(Note(i))
            ref.cast_nowait(Note(i))
        assert _task_count() == before
        recorder.gate.set()


async def test_send_after_and_interval_deliver_and_stop_with_the_actor() -> None:
    async with open_runtime() as rt:
        ticker = _Ticker()
        ref = await rt.spawn(ticker)
        with anyio.fail_after(5):
            await ticker.three_ticks.wait()
            await ticker.once.wait()
        assert ticker.timer is not None and not ticker.timer.cancelled
        await ref.stop()
        assert ticker.timer.cancelled or not ref.alive


async def test_cancelled_timer_never_fires() -> None:
    async with open_runtime() as rt:
        ticker = _Ticker(cancel_once=True)
        ref = await rt.spawn(ticker)
        with anyio.fail_after(5):
            await ticker.three_ticks.wait()
        assert not ticker.once.is_set()
        await ref.stop()


# ---------------------------------------------------------------------------------------------
import msgspec  # noqa: E402

from crucible.actors import Actor, Timer, handler  # noqa: E402


class _Tick(msgspec.Struct, frozen=True):
    pass


class _Once(msgspec.Struct, frozen=True):
    pass


class _Ticker(Actor[int]):
    def __init__(self, cancel_once: bool = False) -> None:
        self.cancel_once = cancel_once
        self.three_ticks = anyio.Event()
        self.once = anyio.Event()
        self.timer: Timer | None = None

    async def init(self) -> int:
        self.timer = self.send_interval(0.01, _Tick())
        once = self.send_after(0.005, _Once())
        if self.cancel_once:
            once.cancel()
        return 0

    @handler
    def tick(self, msg: _Tick) -> None:
        self.state += 1
        if self.state == 3:
            self.three_ticks.set()

    @handler
    def on_once(self, msg: _Once) -> None:
        self.once.set()
