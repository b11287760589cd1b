"""call / cast / info semantics: ordering, correlation, timeouts, crashes, dead actors."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from crucible.actors import (
    Actor,
    ActorCrashed,
    ActorDead,
    ActorInitFailed,
    CallTimeout,
    CallToSelf,
    ExitReason,
    Request,
    UnhandledMessage,
    handler,
    open_runtime,
)

from .actor_kit import Add, Counter, Crash, Echo, Get, Hold, Note, Recorder, Seen

pytestmark = pytest.mark.anyio


async def test_call_returns_handler_value_and_casts_apply_in_order() -> None:
    async with open_runtime() as rt:
        ref = await rt.spawn(Counter())
        for n in range(1, 101):
            await ref.cast(Add(n))
        ref.cast_nowait(Add(1000))
        assert await ref.call(Get()) == sum(range(1, 101)) + 1000


async def test_many_concurrent_callers_each_get_their_own_replies_in_order() -> None:
    callers, per_caller = 40, 25
    async with open_runtime() as rt:
        ref = await rt.spawn(Recorder())
        replies: dict[int, list[tuple[int, int]]] = {c: [] for c in range(callers)}

        async def caller(c: int) -> None:
            for seq in range(per_caller):
                replies[c].append(await ref.call(Echo(c, seq)))

        async with anyio.create_task_group() as tg:
            for c in range(callers):
                tg.start_soon(caller, c)
        for c in range(callers):
            assert replies[c] == [(c, seq) for seq in range(per_caller)]
        handled = await ref.call(Get())
        assert handled == callers * per_caller


async def test_messages_from_one_sender_arrive_in_order_across_casts_and_calls() -> None:
    async with open_runtime() as rt:
        ref = await rt.spawn(Recorder())
        for i in range(300):
            if i % 7 == 0:
                await ref.call(Echo(0, i))
            else:
                await ref.cast(Note(i))
        state = await rt.spawn(_Inspector(ref))
        seen = await state.call(Seen())
        values = [m.seq if isinstance(m, Echo) else m for m in seen]
        assert values == list(range(300))


class _Inspector(Actor[None]):
    """Reads a Recorder's state from the outside (only for tests)."""

    def __init__(self, target: object) -> None:
        self.target = target

    @handler
    def seen(self, msg: Seen) -> list[object]:
        return list(self.target._cell.actor.state)  # type: ignore[attr-defined]


async def test_timeout_raises_and_the_late_reply_never_reaches_a_later_call() -> None:
    async with open_runtime() as rt:
        recorder = Recorder()
        ref = await rt.spawn(recorder)
        with pytest.raises(CallTimeout, match="did not answer Hold"):
            await ref.call(Hold("first"), timeout=0.05)
        recorder.gate.set()  # the first request now completes; its reply has nobody to go to
        assert await ref.call(Hold("second"), timeout=5) == "second"
        assert [m.tag for m in recorder.state if isinstance(m, Hold)] == ["first", "second"]


async def test_crash_gives_the_caller_actor_crashed_with_cause_and_the_actor_dies() -> None:
    async with open_runtime() as rt:
        ref = await rt.spawn(Counter())
        with pytest.raises(ActorCrashed) as info:
            await ref.call(Crash())
        assert isinstance(info.value.__cause__, ValueError)
        assert str(info.value.__cause__) == "boom"
        reason = await ref.wait()
        assert reason.kind == "crashed"
        assert isinstance(reason.error, ValueError)
        with pytest.raises(ActorDead):
            await ref.call(Get())
        with pytest.raises(ActorDead):
            await ref.cast(Add(1))


async def test_killed_mid_handler_answers_in_flight_and_queued_calls_with_actor_dead() -> None:
    async with open_runtime() as rt:
        recorder = Recorder()
        ref = await rt.spawn(recorder)
        outcomes: list[str] = []

        async def call_and_record(message: object) -> None:
            try:
                await ref.call(message, timeout=None)
                outcomes.append("ok")
            except ActorCrashed:
                outcomes.append("crashed")
            except ActorDead:
                outcomes.append("dead")

        async with anyio.create_task_group() as tg:
            tg.start_soon(call_and_record, Hold("block"))
            await recorder.entered.wait()
            for _ in range(5):
                tg.start_soon(call_and_record, Get())
            await anyio.wait_all_tasks_blocked()
            assert ref.queued == 5
            # Kill the actor while it is in the middle of the Hold handler.
            ref._cell.kill()
        assert sorted(outcomes) == ["dead"] * 6


async def test_call_to_self_fails_fast() -> None:
    async with open_runtime() as rt:
        ref = await rt.spawn(_SelfCaller())
        assert await ref.call(_CallYourself()) == "CallToSelf"


class _CallYourself(Request[str], frozen=True):
    pass


class _SelfCaller(Actor[None]):
    @handler
    async def me(self, msg: _CallYourself) -> str:
        try:
            await self.ref.call(Get())
        except CallToSelf:
            return "CallToSelf"
        return "no error"

    @handler
    def get(self, msg: Get) -> int:
        return 0


async def test_unhandled_message_type_is_refused_at_the_sender() -> None:
    async with open_runtime() as rt:
        ref = await rt.spawn(Counter())
        with pytest.raises(UnhandledMessage, match="no handler for Note"):
            await ref.call(Note(1))
        with pytest.raises(UnhandledMessage):
            ref.cast_nowait(Note(1))
        ref.send_info(Note(1))  # info without a handler is dropped, not an error
        assert await ref.call(Get()) == 0


async def test_info_messages_reach_their_handler() -> None:
    async with open_runtime() as rt:
        ref = await rt.spawn(Recorder())
        ref.send_info(Note(7))
        assert await ref.call(Get()) == 1


async def test_init_failure_raises_actor_init_failed_and_leaves_no_name() -> None:
    async with open_runtime() as rt:
        with pytest.raises(ActorInitFailed) as info:
            await rt.spawn(_BadInit(), name="bad")
        assert isinstance(info.value.__cause__, RuntimeError)
        assert rt.whereis("bad") is None
        # the runtime itself is unharmed
        ref = await rt.spawn(Counter())
        assert await ref.call(Get()) == 0


class _BadInit(Actor[None]):
    async def init(self) -> None:
        raise RuntimeError("no config")


async def test_caller_errors_reach_the_caller_without_crashing_the_actor() -> None:
    async with open_runtime() as rt:
        ref = await rt.spawn(_Strict())
        with pytest.raises(KeyError):
            await ref.call(_Lookup("missing"))
        assert ref.alive
        assert await ref.call(_Lookup("known")) == 1


class _Lookup(Request[int], frozen=True):
    key: str


class _Strict(Actor[dict[str, int]]):
    caller_errors = (KeyError,)

    async def init(self) -> dict[str, int]:
        return {"known": 1}

    @handler
    def lookup(self, msg: _Lookup) -> int:
        return self.state[msg.key]


def test_handlers_must_take_frozen_structs() -> None:
    class Mutable(msgspec.Struct):
        x: int

    with pytest.raises(TypeError, match=r"not a frozen msgspec\.Struct"):

        class _Bad(Actor[None]):
            @handler(message=Mutable)
            def on(self, msg: Mutable) -> None: ...


async def test_actor_instance_cannot_be_spawned_twice() -> None:
    async with open_runtime() as rt:
        actor = Counter()
        await rt.spawn(actor)
        with pytest.raises(RuntimeError, match="fresh instance"):
            await rt.spawn(actor)


async def test_no_actor_outlives_open_runtime() -> None:
    async with open_runtime() as rt:
        refs = [await rt.spawn(Counter()) for _ in range(5)]
    assert all(not r.alive for r in refs)
    assert all(r.exit_reason is not None and r.exit_reason.kind == "shutdown" for r in refs)


async def test_crash_answers_its_caller_crashed_and_the_queued_ones_dead() -> None:
    async with open_runtime() as rt:
        recorder = Recorder()
        ref = await rt.spawn(_CrashAfterHold(recorder.gate, recorder.entered))
        outcomes: dict[str, str] = {}

        async def call(label: str, message: object) -> None:
            try:
                await ref.call(message, timeout=None)
                outcomes[label] = "ok"
            except ActorCrashed:
                outcomes[label] = "crashed"
            except ActorDead:
                outcomes[label] = "dead"

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "crasher", Hold())
            await recorder.entered.wait()
            for i in range(3):
                tg.start_soon(call, f"queued{i}", Get())
            await anyio.wait_all_tasks_blocked()
            recorder.gate.set()
        assert outcomes == {
            "crasher": "crashed",
            "queued0": "dead",
            "queued1": "dead",
            "queued2": "dead",
        }


class _CrashAfterHold(Actor[None]):
    def __init__(self, gate: anyio.Event, entered: anyio.Event) -> None:
        self.gate, self.entered = gate, entered

    @handler
    async def hold(self, msg: Hold) -> str:
        self.entered.set()
        await self.gate.wait()
        raise RuntimeError("failed after waiting")

    @handler
    def get(self, msg: Get) -> int:
        return 0


async def test_a_timeout_never_fires_early() -> None:
    async with open_runtime() as rt:
        ref = await rt.spawn(Recorder(), shutdown=0)  # it stays stuck in Hold: cancel it
        for timeout in (0.0, 0.013, 0.031):
            started = anyio.current_time()
            with pytest.raises(CallTimeout):
                await ref.call(Hold(), timeout=timeout)
            assert anyio.current_time() - started >= timeout


async def test_answered_calls_leave_no_timeout_bookkeeping_behind() -> None:
    async with open_runtime() as rt:
        ref = await rt.spawn(Counter())
        for _ in range(200):
            await ref.call(Get(), timeout=60)
        assert all(not bucket for bucket in rt.deadlines._buckets.values())


# -- a caller hears of an actor's end only once it has ended (as gen_server) ------------------


class _SlowToStop(Actor[None]):
    """Crashes on Crash (after Hold's gate, if held); its terminate takes ``linger`` seconds
    (forever with None) and logs what it did."""

    def __init__(self, log: list[str], linger: float | None = 0.02) -> None:
        self.log, self.linger = log, linger
        self.gate, self.entered = anyio.Event(), anyio.Event()

    async def terminate(self, reason: ExitReason, state: None) -> None:
        self.log.append(f"terminate:{reason.kind}")
        if self.linger is None:
            await anyio.sleep_forever()
        await anyio.sleep(self.linger)
        self.log.append("terminated")

    @handler
    async def hold(self, msg: Hold) -> str:
        self.entered.set()
        await self.gate.wait()
        raise RuntimeError("failed after waiting")

    @handler
    def crash(self, msg: Crash) -> None:
        raise ValueError("boom")

    @handler
    def get(self, msg: Get) -> int:
        return 0


async def test_a_crash_reaches_its_caller_only_after_terminate_and_with_exit_reason_set() -> None:
    """gen_server:call: the caller learns of the server's crash only once the server process
    has terminated (its monitor fires on exit, after terminate/2 has run), so by then the
    actor is dead and its exit reason known; ActorCrashed still chains the handler's error."""
    log: list[str] = []
    async with open_runtime() as rt:
        ref = await rt.spawn(_SlowToStop(log))
        with pytest.raises(ActorCrashed) as info:
            await ref.call(Crash())
        assert log == ["terminate:crashed", "terminated"]
        assert not ref.alive
        reason = ref.exit_reason
        assert reason is not None and reason.kind == "crashed"
        assert isinstance(info.value.__cause__, ValueError)
        assert reason.error is info.value.__cause__


async def test_queued_callers_hear_the_actor_is_dead_only_once_it_has_stopped() -> None:
    """gen_server:call: every caller whose request is still in a crashed server's mailbox
    gets its exit only when the server process has terminated, never while terminate/2 is
    still running."""
    log: list[str] = []
    seen: dict[str, tuple[str, list[str], ExitReason | None]] = {}
    async with open_runtime() as rt:
        actor = _SlowToStop(log)
        ref = await rt.spawn(actor)

        async def call(label: str, message: object) -> None:
            try:
                await ref.call(message, timeout=None)
                outcome = "ok"
            except ActorCrashed:
                outcome = "crashed"
            except ActorDead:
                outcome = "dead"
            seen[label] = (outcome, list(log), ref.exit_reason)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "crasher", Hold())
            await actor.entered.wait()
            for i in range(3):
                tg.start_soon(call, f"queued{i}", Get())
            await anyio.wait_all_tasks_blocked()
            actor.gate.set()
        assert set(seen) == {"crasher", "queued0", "queued1", "queued2"}
        for label, (outcome, log_then, reason) in seen.items():
            assert outcome == ("crashed" if label == "crasher" else "dead")
            assert log_then == ["terminate:crashed", "terminated"]
            assert reason is not None and reason.kind == "crashed"


async def test_a_blocked_caller_hears_the_actor_is_dead_only_once_it_has_stopped() -> None:
    """gen_server:call: a request is answered by the server or, if the server dies first, by
    the exit once it has terminated. A call waiting for room in a full mailbox (``block``)
    counts as sent: it too hears of the crash only after terminate has run."""
    log: list[str] = []
    seen: list[tuple[str, list[str]]] = []
    async with open_runtime() as rt:
        actor = _SlowToStop(log)
        ref = await rt.spawn(actor, mailbox_size=1, overflow="block")

        async def call(message: object) -> None:
            try:
                await ref.call(message, timeout=None)
            except ActorDead:
                seen.append(("dead", list(log)))
            except ActorCrashed:
                seen.append(("crashed", list(log)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, Hold())
            await actor.entered.wait()
            tg.start_soon(call, Get())  # fills the mailbox
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(call, Get())  # parked, waiting for room
            await anyio.wait_all_tasks_blocked()
            assert len(ref._cell.mailbox.parked) == 1
            actor.gate.set()
        after = ["terminate:crashed", "terminated"]
        assert sorted(seen) == [("crashed", after), ("dead", after), ("dead", after)]


async def test_a_crash_whose_terminate_outlasts_the_call_timeout_times_the_call_out() -> None:
    """gen_server:call(Server, Request, Timeout): the caller waits at most Timeout for either
    the reply or the server's exit; a server still in terminate/2 when it passes makes the
    call time out. Stopping the actor then (it is cancelled) ends it as killed."""
    log: list[str] = []
    async with open_runtime() as rt:
        ref = await rt.spawn(_SlowToStop(log, linger=None), shutdown=0)
        with pytest.raises(CallTimeout):
            await ref.call(Crash(), timeout=0.05)
        assert log == ["terminate:crashed"]
        assert ref.exit_reason is None
        assert (await ref.stop(0)).kind == "killed"


async def test_a_crashed_actor_killed_in_terminate_still_answers_its_caller_crashed() -> None:
    """gen_server:call: the caller gets the exit when the server process ends, however it
    ends; the handler's error stays the cause of ActorCrashed even if terminate was cut short."""
    log: list[str] = []
    async with open_runtime() as rt:
        ref = await rt.spawn(_SlowToStop(log, linger=None), shutdown=0)
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                await ref.call(Crash(), timeout=None)
            except ActorCrashed as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            assert log == ["terminate:crashed"] and not errors
            await ref.stop(0)
        assert isinstance(errors[0].__cause__, ValueError)
        assert ref.exit_reason is not None and ref.exit_reason.kind == "killed"


async def test_a_call_to_an_actor_still_in_terminate_fails_only_once_it_has_stopped() -> None:
    """gen_server:call to a server that is running terminate/2: the request sits in its
    mailbox and the caller gets the exit when the server has terminated (not at once)."""
    log: list[str] = []
    async with open_runtime() as rt:
        ref = await rt.spawn(_SlowToStop(log))
        await ref.cast(Crash())  # nobody waits on this one
        await anyio.wait_all_tasks_blocked()
        assert log == ["terminate:crashed"]
        assert not ref.alive and ref.exit_reason is None  # refusing messages, not yet ended
        with pytest.raises(ActorDead, match="has stopped"):
            await ref.call(Get())
        assert log == ["terminate:crashed", "terminated"]
        assert ref.exit_reason is not None and ref.exit_reason.kind == "crashed"


async def test_a_call_to_an_actor_stuck_in_terminate_times_out() -> None:
    """gen_server:call(Server, Request, Timeout) to a server still in terminate/2 exits with
    timeout once Timeout has passed, not with the server's exit."""
    log: list[str] = []
    async with open_runtime() as rt:
        ref = await rt.spawn(_SlowToStop(log, linger=None), shutdown=0)
        await ref.cast(Crash())
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(CallTimeout):
            await ref.call(Get(), timeout=0.02)
        assert ref.exit_reason is None


class _CallsItselfInTerminate(Actor[None]):
    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = errors

    async def terminate(self, reason: ExitReason, state: None) -> None:
        try:
            await self.ref.call(Get(), timeout=None)
        except ActorDead as exc:
            self.errors.append(exc)

    @handler
    def get(self, msg: Get) -> int:
        return 0


async def test_an_actor_calling_itself_from_terminate_fails_at_once() -> None:
    """Waiting for one's own end could never finish, so from terminate a call to oneself fails
    at once with ActorDead (a gen_server calling itself gets an exit at once too)."""
    errors: list[BaseException] = []
    async with open_runtime() as rt:
        ref = await rt.spawn(_CallsItselfInTerminate(errors))
        with anyio.fail_after(5):
            await ref.stop()
        assert len(errors) == 1
