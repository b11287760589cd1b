"""embedded(): the runtime on a background thread, driven from plain synchronous code."""

from __future__ import annotations

import threading

import pytest

from crucible.actors import ActorCrashed, ActorDead, Backoff, ChildSpec, embedded

from .actor_kit import Add, Counter, Crash, Get


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_trainer_thread_calls_and_casts(backend: str) -> None:
    with embedded(backend) as rt:  # type: ignore[arg-type]
        ref = rt.spawn(Counter(), name="counter")
        for _ in range(100):
            ref.cast(Add(1))
        assert ref.call(Get()) == 100
        assert rt.whereis("counter") is not None
        with pytest.raises(ActorCrashed):
            ref.call(Crash())
        with pytest.raises(ActorDead):
            ref.call(Get())
    assert not ref.alive


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_refs_are_safe_from_many_threads(backend: str) -> None:
    with embedded(backend) as rt:  # type: ignore[arg-type]
        ref = rt.spawn(Counter())
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                for _ in range(200):
                    ref.cast(Add(1))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert ref.call(Get()) == 800


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_supervised_children_from_sync_code(backend: str) -> None:
    with embedded(backend) as rt:  # type: ignore[arg-type]
        sup = rt.supervise([ChildSpec("c", Counter, name="c")], backoff=Backoff.none())
        child = rt.whereis("c")
        assert child is not None
        child.cast(Add(2))
        assert child.call(Get()) == 2
        assert [c.id for c in sup.which_children()] == ["c"]
        sup.terminate_child("c")
        assert rt.whereis("c") is None
        restarted = sup.restart_child("c")
        assert restarted.call(Get()) == 0
        assert sup.count_children().active == 1
