"""Properties of supervision under random crash/exit sequences (hypothesis).

A model of OTP's rules predicts, after every event, which children must be running, which
must be gone, and whether the supervisor must have escalated; the real runtime must agree.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crucible.actors import (
    ActorCrashed,
    ActorDead,
    Backoff,
    ChildSpec,
    RestartIntensity,
    RestartIntensityExceeded,
    open_runtime,
)

from .actor_kit import Counter, Crash, StopNormally

pytestmark = pytest.mark.anyio

RESTART_TYPES = ("permanent", "transient", "temporary")
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")


class Model:
    """What OTP's rules say the supervisor's children should look like."""

    def __init__(self, types: list[str], strategy: str, max_restarts: int) -> None:
        self.children = [[f"c{i}", t, "running"] for i, t in enumerate(types)]
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.restarts = 0
        self.escalated = False

    def running(self) -> list[str]:
        return [c[0] for c in self.children if c[2] == "running"]

    def present(self) -> list[str]:
        return [c[0] for c in self.children]

    def exit(self, ident: str, abnormal: bool) -> None:
        child = next(c for c in self.children if c[0] == ident)
        kind = child[1]
        if not (kind == "permanent" or (kind == "transient" and abnormal)):
            if kind == "temporary":
                self.children.remove(child)
            else:
                child[2] = "stopped"
            return
        self.restarts += 1
        if self.restarts > self.max_restarts:
            self.escalated = True
            return
        index = self.children.index(child)
        group = {
            "one_for_one": [child],
            "one_for_all": list(self.children),
            "rest_for_one": self.children[index:],
        }[self.strategy]
        for member in group:
            if member is not child and member[1] == "temporary":
                self.children.remove(member)
            else:
                member[2] = "running"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    types=st.lists(st.sampled_from(RESTART_TYPES), min_size=1, max_size=4),
    strategy=st.sampled_from(STRATEGIES),
    max_restarts=st.integers(0, 4),
    events=st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=8),
)
async def test_random_exits_match_the_otp_model(
    types: list[str], strategy: str, max_restarts: int, events: list[tuple[int, bool]]
) -> None:
    model = Model(types, strategy, max_restarts)
    specs = [
        ChildSpec(f"c{i}", Counter, restart=t, name=f"c{i}")  # type: ignore[arg-type]
        for i, t in enumerate(types)
    ]
    async with open_runtime() as rt:
        sup = await rt.supervise(
            specs,
            strategy=strategy,  # type: ignore[arg-type]
            max_restarts=max_restarts,
            max_seconds=3600,
            backoff=Backoff.none(),
        )
        for index, abnormal in events:
            running = model.running()
            if not running:
                break
            ident = running[index % len(running)]
            ref = rt.whereis(ident)
            assert ref is not None, f"{ident} should be running"
            if abnormal:
                with pytest.raises(ActorCrashed):
                    await ref.call(Crash())
            else:
                await ref.call(StopNormally())
            await ref.wait()
            model.exit(ident, abnormal)
            if model.escalated:
                reason = await sup.wait()
                assert isinstance(reason.error, RestartIntensityExceeded)
                assert all(rt.whereis(c) is None for c in model.present())
                return
            try:
                children = await sup.which_children()
            except ActorDead:  # pragma: no cover - the model says it must be alive
                pytest.fail(f"supervisor escalated after {model.restarts} restarts")
            assert [c.id for c in children] == model.present()
            alive = [c.id for c in children if c.ref is not None and c.ref.alive]
            assert alive == model.running()
            for ident in model.running():
                assert rt.whereis(ident) is not None
        assert sup.ref.alive


@given(
    max_restarts=st.integers(0, 6),
    max_seconds=st.floats(0.5, 100),
    gaps=st.lists(st.floats(0, 50), max_size=30),
)
def test_intensity_allows_at_most_max_restarts_in_any_window(
    max_restarts: int, max_seconds: float, gaps: list[float]
) -> None:
    intensity = RestartIntensity(max_restarts, max_seconds)
    now = 0.0
    times: list[float] = []
    for gap in gaps:
        now += gap
        times.append(now)
        allowed = intensity.record(now)
        in_window = [t for t in times if now - t <= max_seconds]
        assert allowed == (len(in_window) <= max_restarts)
        if not allowed:
            break


@given(
    initial=st.floats(0, 1),
    extra=st.floats(0, 5),
    multiplier=st.floats(1, 4),
    jitter=st.floats(0, 1),
    seed=st.integers(0, 2**32),
    n=st.integers(0, 20),
)
def test_backoff_delays_are_bounded_and_reproducible(
    initial: float, extra: float, multiplier: float, jitter: float, seed: int, n: int
) -> None:
    backoff = Backoff(initial, initial + extra, multiplier, jitter, seed=seed)
    delays = backoff.schedule(n)
    assert delays == backoff.schedule(n)
    assert all(0 <= d <= backoff.maximum for d in delays)
    for k, d in enumerate(delays):
        base = min(backoff.maximum, initial * multiplier**k)
        assert base * (1 - jitter) - 1e-12 <= d <= base * (1 + jitter) + 1e-12


def test_model_agrees_on_a_known_sequence() -> None:
    """A worked example of the model itself, so a bug in it cannot hide one in the runtime."""
    model = Model(["permanent", "temporary", "transient"], "one_for_all", 5)
    model.exit("c2", abnormal=False)
    assert model.running() == ["c0", "c1"] and model.present() == ["c0", "c1", "c2"]
    model.exit("c0", abnormal=True)
    assert model.present() == ["c0", "c2"] and model.running() == ["c0", "c2"]
