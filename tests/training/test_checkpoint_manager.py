from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tinker import types

from crucible.actors import open_runtime
from crucible.training import (
    CheckpointManager,
    CheckpointManagerClient,
    CheckpointMetricNotFound,
    CheckpointNotFound,
    CheckpointRecord,
    FaultyBackend,
    InvalidStep,
    NoCheckpoints,
    RetryPolicy,
)
from crucible.training.backends.local import LocalBackend, LocalBackendConfig

from .training_kit import ADAM, TINY_TASK, RecordingBackend

pytestmark = pytest.mark.anyio

MakeConfig = Callable[..., LocalBackendConfig]


def log_lines(log_dir: Path) -> list[dict[str, object]]:
    text = (log_dir / "checkpoints.jsonl").read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


async def test_save_names_steps_and_writes_the_cookbook_format(tmp_path: Path) -> None:
    backend = RecordingBackend()
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(tmp_path, lambda: backend))
        )
        state = await manager.save(10, {"test_loss": 1.5}, epoch=0)
        sampler = await manager.save(20, kind="sampler")
        both = await manager.save(30, {"test_loss": 1.0}, kind="both", final=True, epoch=1)
    assert (state.name, state.state_path, state.sampler_path) == (
        "step_000010",
        "fake://step_000010",
        None,
    )
    assert (sampler.state_path, sampler.sampler_path) == (None, "fake://step_000020")
    assert both.state_path and both.sampler_path and both.final
    assert backend.applied == [
        "save_state",
        "save_weights_for_sampler",
        "save_state",
        "save_weights_for_sampler",
    ]
    assert log_lines(tmp_path) == [
        {
            "name": "step_000010",
            "epoch": 0,
            "batch": 10,
            "state_path": "fake://step_000010",
            "final": False,
            "test_loss": 1.5,
        },
        {"name": "step_000020", "batch": 20, "sampler_path": "fake://step_000020", "final": False},
        {
            "name": "step_000030",
            "epoch": 1,
            "batch": 30,
            "state_path": "fake://step_000030",
            "sampler_path": "fake://step_000030",
            "final": True,
            "test_loss": 1.0,
        },
    ]


async def test_list_latest_and_bad_requests(tmp_path: Path) -> None:
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(tmp_path, RecordingBackend))
        )
        with pytest.raises(NoCheckpoints):
            await manager.latest()
        assert await manager.resume_point() is None
        for step in (5, 1, 3):
            await manager.save(step)
        assert [r.batch for r in await manager.list()] == [5, 3, 1]
        assert (await manager.latest()).batch == 5
        with pytest.raises(InvalidStep):
            await manager.save(-1)
        with pytest.raises(ValueError, match="reserved"):
            await manager.save(7, {"name": 1.0})
        with pytest.raises(ValueError, match="finite"):
            await manager.save(7, {"loss": float("nan")})
        assert len(await manager.list()) == 3  # bad requests changed nothing, actor alive


async def test_get_best_only_among_checkpoints_with_the_metric(tmp_path: Path) -> None:
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(tmp_path, RecordingBackend))
        )
        with pytest.raises(NoCheckpoints):
            await manager.get_best("loss")
        await manager.save(1, {"loss": 3.0, "acc": 0.1})
        await manager.save(2)
        await manager.save(3, {"loss": 1.0, "acc": 0.5})
        await manager.save(4, {"loss": 2.0, "acc": 0.9})
        assert (await manager.get_best("loss", "min")).batch == 3
        assert (await manager.get_best("acc", "max")).batch == 4
        with pytest.raises(CheckpointMetricNotFound, match="bleu"):
            await manager.get_best("bleu")


async def test_prune_keeps_best_unscored_and_latest_state_and_deletes_files(
    tmp_path: Path, make_config: MakeConfig
) -> None:
    async with LocalBackend(make_config()) as backend, open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(tmp_path, lambda: backend))
        )
        for step, loss in ((1, 4.0), (2, 1.0), (3, None), (4, 2.0), (5, 3.0)):
            await manager.save(step, None if loss is None else {"loss": loss}, kind="both")
        removed = await manager.prune(keep=2, metric="loss", mode="min")
        assert [r.batch for r in removed] == [1]  # 5 is the latest state checkpoint: kept
        assert [r.batch for r in await manager.list()] == [5, 4, 3, 2]
        root = backend.config.checkpoint_root / "test-run"
        assert sorted(p.name for p in root.iterdir()) == [f"step_00000{i}" for i in (2, 3, 4, 5)]
        assert [line["batch"] for line in log_lines(tmp_path)] == [2, 3, 4, 5]


async def test_max_checkpoints_drops_the_oldest(tmp_path: Path) -> None:
    backend = RecordingBackend()
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(tmp_path, lambda: backend, max_checkpoints=2))
        )
        for step in range(4):
            await manager.save(step)
        assert [r.batch for r in await manager.list()] == [3, 2]
    assert backend.applied.count("delete_checkpoint") == 2
    assert [line["batch"] for line in log_lines(tmp_path)] == [2, 3]


async def test_resume_point_is_the_newest_state_checkpoint(tmp_path: Path) -> None:
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(tmp_path, RecordingBackend))
        )
        await manager.save(1, kind="sampler")
        assert await manager.resume_point() is None
        await manager.save(2, kind="state")
        await manager.save(3, kind="sampler")
        point = await manager.resume_point()
        assert point is not None and point.batch == 2


async def test_load_for_sampling_opens_the_saved_weights(
    tmp_path: Path, make_config: MakeConfig
) -> None:
    prompt = types.ModelInput.from_ints([1, 2, 3])
    async with LocalBackend(make_config()) as backend, open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(tmp_path, lambda: backend))
        )
        await (await backend.forward_backward(TINY_TASK))
        await (await backend.optim_step(ADAM))
        expected = await (await (await (await backend.sampling_client())).compute_logprobs(prompt))
        await manager.save(1, kind="sampler")
        client = await manager.load_for_sampling("step_000001")
        assert await (await client.compute_logprobs(prompt)) == expected
        with pytest.raises(CheckpointNotFound, match="step_000009"):
            await manager.load_for_sampling("step_000009")


async def test_transient_backend_failures_are_retried(tmp_path: Path) -> None:
    inner = RecordingBackend()
    faulty = FaultyBackend(inner, seed=3, rate=0.5, kinds=["transient", "applied_then_failed"])
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(
                CheckpointManager(tmp_path, lambda: faulty, retry=RetryPolicy(initial_s=0.0))
            )
        )
        for step in range(10):
            await manager.save(step)
    assert faulty.injected, "the seed should inject some faults"
    assert [line["batch"] for line in log_lines(tmp_path)] == list(range(10))


async def test_state_survives_an_actor_restart_and_repairs_a_torn_tail(tmp_path: Path) -> None:
    async with open_runtime() as rt:
        ref = await rt.spawn(CheckpointManager(tmp_path, RecordingBackend))
        manager = CheckpointManagerClient(ref)
        await manager.save(1, {"loss": 2.0})
        await manager.save(2, {"loss": 1.0})
        await ref.stop()
    with (tmp_path / "checkpoints.jsonl").open("a") as log:
        log.write('{"name": "step_000003", "bat')  # a kill in the middle of an append
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(tmp_path, RecordingBackend))
        )
        assert [r.batch for r in await manager.list()] == [2, 1]
        assert (await manager.get_best("loss")).batch == 2
        await manager.save(3)
    assert [line["batch"] for line in log_lines(tmp_path)] == [1, 2, 3]


async def test_a_damaged_middle_line_is_an_error_not_silent_loss(tmp_path: Path) -> None:
    (tmp_path / "checkpoints.jsonl").write_text(
        '{"name": "a", "batch": 1}\ngarbage\n{"name": "b", "batch": 2}\n'
    )
    from crucible.actors import ActorInitFailed

    async with open_runtime() as rt:
        with pytest.raises(ActorInitFailed):
            await rt.spawn(CheckpointManager(tmp_path, RecordingBackend))


CHILD = textwrap.dedent(
    """
    import sys, anyio
    from crucible.actors import open_runtime
    from crucible.training import CheckpointManager, CheckpointManagerClient
    from tests.training.training_kit import RecordingBackend

    async def main():
        async with open_runtime() as rt:
            manager = CheckpointManagerClient(
                await rt.spawn(CheckpointManager(sys.argv[1], RecordingBackend))
            )
            step = 0
            while True:
                await manager.save(step, {"loss": 1.0 / (step + 1)})
                print(step, flush=True)
                step += 1

    anyio.run(main)
    """
)


def test_checkpoints_jsonl_stays_valid_after_sigkill_during_saves(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert child.stdout is not None
    for _ in range(25):  # wait (on the child's output, not a clock) until it is mid-stream
        assert child.stdout.readline(), "the child process died early"
    child.send_signal(signal.SIGKILL)
    child.wait()
    lines = (tmp_path / "checkpoints.jsonl").read_text().split("\n")
    complete = [json.loads(line) for line in lines[:-1]]  # every complete line is valid JSON
    assert len(complete) >= 25
    assert [row["batch"] for row in complete] == list(range(len(complete)))


@given(
    losses=st.lists(
        st.one_of(st.none(), st.floats(0, 10, allow_nan=False)), min_size=1, max_size=12
    ),
    keep=st.integers(0, 5),
    mode=st.sampled_from(["min", "max"]),
)
@example(losses=[1.0, 3.0], keep=0, mode="min")  # the best is not the latest: keep=0 keeps it
@settings(max_examples=25, deadline=None)
def test_prune_rule_property(
    tmp_path_factory: pytest.TempPathFactory, losses: list[float | None], keep: int, mode: str
) -> None:
    import anyio

    log_dir = tmp_path_factory.mktemp("prune")

    async def scenario() -> tuple[list[CheckpointRecord], list[CheckpointRecord]]:
        async with open_runtime() as rt:
            manager = CheckpointManagerClient(
                await rt.spawn(CheckpointManager(log_dir, RecordingBackend))
            )
            for step, loss in enumerate(losses):
                await manager.save(step, None if loss is None else {"loss": loss})
            before = await manager.list()
            try:
                await manager.prune(keep, "loss", mode)  # type: ignore[arg-type]
            except CheckpointMetricNotFound:
                assert all(loss is None for loss in losses)
            return before, await manager.list()

    before, after = anyio.run(scenario)
    scored = [r for r in before if "loss" in r.metrics]
    sign = 1 if mode == "min" else -1
    best = sorted(scored, key=lambda r: sign * r.metrics["loss"])[: max(keep, 1)]
    expected = {r.name for r in before if "loss" not in r.metrics} | {r.name for r in best}
    expected.add(before[0].name)  # the latest (also the resume point) always stays
    if not scored:
        expected = {r.name for r in before}
    assert {r.name for r in after} == expected
    assert [r.batch for r in after] == sorted((r.batch for r in after), reverse=True)


async def test_a_hung_backend_fails_the_save_instead_of_hanging(tmp_path: Path) -> None:
    from crucible.actors import ActorCrashed

    faulty = FaultyBackend(RecordingBackend(), seed=0, rate=1.0, kinds=["hang"])
    retry = RetryPolicy(attempts=2, initial_s=0.0, timeout_s=0.05)
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(tmp_path, lambda: faulty, retry=retry))
        )
        with pytest.raises(ActorCrashed) as crashed:  # a supervisor would restart it
            await manager.save(1)
        assert isinstance(crashed.value.__cause__, TimeoutError)
    assert not (tmp_path / "checkpoints.jsonl").exists()
