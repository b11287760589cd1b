"""The CheckpointManager's keeping rules: the best and the latest checkpoints survive every prune
and rotation; get and delete by name; a saved name is never replaced unless asked."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tinker import types

from crucible.actors import open_runtime
from crucible.training import CheckpointNotFound
from crucible.training.checkpoints import (
    CheckpointExists,
    CheckpointManager,
    CheckpointManagerClient,
    CheckpointMetricNotFound,
    CheckpointRecord,
    NoCheckpoints,
)
from crucible.training.port import DeferredResult

from .training_kit import RecordingBackend

pytestmark = pytest.mark.anyio


class PathsBackend(RecordingBackend):
    """Sampler files at their own paths (as real backends), and a record of deleted paths."""

    def __init__(self) -> None:
        super().__init__()
        self.deleted: list[str] = []

    async def save_weights_for_sampler(
        self, name: str
    ) -> DeferredResult[types.SaveWeightsForSamplerResponse]:
        response = types.SaveWeightsForSamplerResponse(path=f"fake://sampler/{name}")
        return self._apply("save_weights_for_sampler", response)

    async def delete_checkpoint(self, path: str) -> DeferredResult[None]:
        self.deleted.append(path)
        return await super().delete_checkpoint(path)


def log_rows(log_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (log_dir / "checkpoints.jsonl").read_text().splitlines()]


async def test_prune_with_keep_zero_keeps_the_best_and_the_latest(tmp_path: Path) -> None:
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(tmp_path, RecordingBackend))
        )
        for step, loss in ((1, 3.0), (2, 0.5), (3, 2.0), (4, 4.0)):
            await manager.save(step, {"loss": loss})
        removed = await manager.prune(0, "loss", "min")
        assert sorted(r.batch for r in removed) == [1, 3]
        assert [r.batch for r in await manager.list()] == [4, 2]  # latest, best
        assert (await manager.get_best("loss")).batch == 2
    assert [row["batch"] for row in log_rows(tmp_path)] == [2, 4]


async def test_rotation_keeps_the_best_by_the_chosen_metric(tmp_path: Path) -> None:
    backend = RecordingBackend()
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(
                CheckpointManager(
                    tmp_path,
                    lambda: backend,
                    max_checkpoints=2,
                    best_metric="accuracy",
                    best_mode="max",
                )
            )
        )
        await manager.save(0, {"accuracy": 0.9})  # the best, saved first: the oldest
        for step in range(1, 5):
            await manager.save(step, {"accuracy": 0.1 * step})
        assert [r.batch for r in await manager.list()] == [4, 0]
        # a sampler-only latest: the resume point (step 4) and the best stay besides it
        await manager.save(5, {"accuracy": 0.2}, kind="sampler")
        assert [r.batch for r in await manager.list()] == [5, 4, 0]
    assert backend.applied.count("delete_checkpoint") == 3


async def test_get_and_delete_by_name(tmp_path: Path) -> None:
    backend = PathsBackend()
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(tmp_path, lambda: backend))
        )
        saved = await manager.save(1, {"loss": 1.0}, kind="both")
        await manager.save(2)
        assert await manager.get("step_000001") == saved
        with pytest.raises(CheckpointNotFound, match="step_000009"):
            await manager.get("step_000009")
        assert await manager.delete("step_000001") == saved
        assert sorted(backend.deleted) == ["fake://sampler/step_000001", "fake://step_000001"]
        with pytest.raises(CheckpointNotFound):
            await manager.get("step_000001")
        with pytest.raises(CheckpointNotFound):
            await manager.delete("step_000001")
        assert [r.name for r in await manager.list()] == ["step_000002"]
    assert [row["name"] for row in log_rows(tmp_path)] == ["step_000002"]


async def test_saving_over_a_name_is_refused_unless_asked(tmp_path: Path) -> None:
    backend = PathsBackend()
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(tmp_path, lambda: backend))
        )
        first = await manager.save(1, {"loss": 2.0}, kind="both")
        await manager.save(2)
        applied = list(backend.applied)
        with pytest.raises(CheckpointExists, match=r"step_000001.*overwrite=True") as refused:
            await manager.save(1, {"loss": 1.0})
        assert refused.value.existing == first
        assert backend.applied == applied  # refused before the backend wrote anything
        assert await manager.get("step_000001") == first

        second = await manager.save(1, {"loss": 1.0}, kind="state", overwrite=True)
        assert second.sampler_path is None and second.metrics == {"loss": 1.0}
        # the replaced checkpoint's sampler file is not part of the new one: deleted
        assert backend.applied[len(applied) :] == ["save_state", "delete_checkpoint"]
        assert backend.deleted == ["fake://sampler/step_000001"]
        assert await manager.get("step_000001") == second
    rows = log_rows(tmp_path)
    assert [row["name"] for row in rows] == ["step_000001", "step_000002"]  # one line a name
    assert rows[0]["loss"] == 1.0 and "sampler_path" not in rows[0]


async def test_a_log_with_repeated_names_gets_one_line_per_name_on_open(tmp_path: Path) -> None:
    log = tmp_path / "checkpoints.jsonl"
    log.write_text(
        '{"name":"step_000001","batch":1,"state_path":"a","final":false,"loss":3.0}\n'
        '{"name":"step_000002","batch":2,"state_path":"b","final":false}\n'
        '{"name":"step_000001","batch":1,"state_path":"a","final":false,"loss":1.0}\n'
    )
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(tmp_path, RecordingBackend))
        )
        assert (await manager.get("step_000001")).metrics == {"loss": 1.0}
    assert [(row["name"], row.get("loss")) for row in log_rows(tmp_path)] == [
        ("step_000002", None),
        ("step_000001", 1.0),
    ]


# ---- property: any sequence of saves and prunes ------------------------------------------

Save = tuple[str, int, float | None, str]  # ("save", step, loss, kind)
Prune = tuple[str, int, str]  # ("prune", keep, metric)

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("save"),
            st.integers(0, 8),
            st.one_of(st.none(), st.floats(0, 5, allow_nan=False)),
            st.sampled_from(["state", "sampler", "both"]),
        ),
        st.tuples(st.just("prune"), st.integers(0, 3), st.sampled_from(["loss", "acc"])),
    ),
    min_size=1,
    max_size=14,
)


@given(ops=operations, limit=st.one_of(st.none(), st.integers(1, 4)))
# the cases each rule exists for, always run: the best is the oldest when rotation needs room;
# a prune with keep=0; the latest is a sampler checkpoint (not the resume point) ranked last
@example(
    ops=[("save", 0, 0.1, "state"), ("save", 1, 1.0, "state"), ("save", 2, 2.0, "both")], limit=1
)
@example(
    ops=[("save", 0, 2.0, "state"), ("save", 1, 0.5, "state"), ("prune", 0, "loss")], limit=None
)
@example(
    ops=[("save", 0, 0.1, "state"), ("save", 1, 5.0, "sampler"), ("prune", 0, "loss")], limit=None
)
@settings(max_examples=60, deadline=None)
def test_best_and_latest_survive_any_saves_and_prunes(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[Save | Prune],
    limit: int | None,
) -> None:
    """Across every operation: the checkpoint with the newest step stays, and so does the best
    loss (unless the operation replaced the checkpoint holding it); nothing unsaved appears;
    the log holds exactly the listed checkpoints, one line each; the resume point is the
    newest state checkpoint; rotation keeps the count within the limit (or the protected)."""
    log_dir = tmp_path_factory.mktemp("rules")

    async def scenario() -> None:
        saved: dict[str, CheckpointRecord] = {}  # the last save of each name
        present: dict[str, CheckpointRecord] = {}
        async with open_runtime() as rt:
            manager = CheckpointManagerClient(
                await rt.spawn(
                    CheckpointManager(
                        log_dir, PathsBackend, max_checkpoints=limit, best_metric="loss"
                    )
                )
            )
            for op in ops:
                candidates = dict(present)
                scored = {n: r.metrics["loss"] for n, r in present.items() if "loss" in r.metrics}
                best = min(scored.values(), default=None)
                holders = {name for name, loss in scored.items() if loss == best}
                if op[0] == "save":
                    _, step, loss, kind = op
                    metrics = {"loss": loss, "acc": -loss} if loss is not None else {}
                    record = await manager.save(
                        step,
                        metrics,
                        kind=kind,  # type: ignore[arg-type]
                        overwrite=True,
                    )
                    saved[record.name] = candidates[record.name] = record
                    holders.discard(record.name)  # replaced: its old loss is gone
                else:
                    _, keep, metric = op
                    mode = "min" if metric == "loss" else "max"
                    try:
                        await manager.prune(keep, metric, mode)  # type: ignore[arg-type]
                    except NoCheckpoints:
                        assert not present
                    except CheckpointMetricNotFound:
                        assert not any(metric in r.metrics for r in present.values())
                present = {r.name: r for r in await manager.list()}
                assert all(saved[name] == record for name, record in present.items())
                newest = max(candidates.values(), key=lambda r: r.batch, default=None)
                if newest is not None:
                    assert newest.name in present
                if best is not None and holders:
                    assert min(r.metrics.get("loss", 99.0) for r in present.values()) <= best
                with_state = [r for r in present.values() if r.state_path is not None]
                expected_point = max(with_state, key=lambda r: r.batch, default=None)
                assert await manager.resume_point() == expected_point
                if limit is not None:
                    assert len(present) <= max(limit, 3)
                rows = log_rows(log_dir) if saved else []
                assert sorted(row["name"] for row in rows) == sorted(present)

    anyio.run(scenario)
