from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.actors import open_runtime
from crucible.training import (
    AlreadyExists,
    CycleDetected,
    DuplicateConfig,
    InvalidPromotion,
    MissingFields,
    ModelNotFound,
    ModelRegistry,
    ModelRegistryClient,
    RegistryStore,
)
from crucible.training.registry import config_hash

pytestmark = pytest.mark.anyio


def model(name: str = "m", version: str = "1", **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": name,
        "version": version,
        "base_model": "crucible/tiny-2l-128",
        "recipe": "sl_basic",
        "training_config": {"lr": 3e-3, "name": name, "version": version},
        "checkpoint_path": f"local://run/sampler_weights/{name}-{version}",
    }
    fields.update(overrides)
    return fields


async def test_register_get_and_the_uniqueness_rules(tmp_path: Path) -> None:
    async with open_runtime() as rt:
        registry = ModelRegistryClient(await rt.spawn(ModelRegistry(tmp_path / "registry.db")))
        first = await registry.register(**model(metrics={"acc": 0.5}, tags=["math", "a"]))
        assert first.stage == "experiment" and first.tags == ("a", "math")
        assert await registry.get(first.id) == first
        with pytest.raises(AlreadyExists):
            await registry.register(**model(training_config={"other": 1}))
        reordered = {"version": "1", "name": "m", "lr": 3e-3}  # same config, other key order
        with pytest.raises(DuplicateConfig) as duplicate:
            await registry.register(**model(version="2", training_config=reordered))
        assert duplicate.value.existing == first
        with pytest.raises(MissingFields) as missing:
            await registry.register(**model(version="3", recipe="", checkpoint_path=""))
        assert missing.value.fields == ("recipe", "checkpoint_path")
        with pytest.raises(ModelNotFound):
            await registry.get(999)
        assert len(await registry.list()) == 1  # rejected requests stored nothing


async def test_lookup_by_config_hash(tmp_path: Path) -> None:
    async with open_runtime() as rt:
        registry = ModelRegistryClient(await rt.spawn(ModelRegistry(tmp_path / "registry.db")))
        first = await registry.register(**model("a"))
        second = await registry.register(**model("b"))
        assert first.config_hash == config_hash(first.training_config)
        assert await registry.get_by_config_hash(first.config_hash) == first
        assert await registry.get_by_config_hash(second.config_hash) == second
        reordered = dict(reversed(list(second.training_config.items())))
        assert await registry.get_by_config(reordered) == second
        unknown = config_hash({"lr": 1.0})
        with pytest.raises(ModelNotFound, match=unknown):
            await registry.get_by_config_hash(unknown)
        with pytest.raises(ModelNotFound):
            await registry.get_by_config({"lr": 3e-3, "name": "a", "version": "2"})
        for bad in ("", "abc", first.config_hash.upper(), first.config_hash + "0"):
            with pytest.raises(ValueError, match="64 lowercase hex"):
                await registry.get_by_config_hash(bad)
        assert await registry.get(first.id) == first  # rejected lookups left the actor alive


async def test_list_find_and_ensemble_selection(tmp_path: Path) -> None:
    async with open_runtime() as rt:
        registry = ModelRegistryClient(await rt.spawn(ModelRegistry(tmp_path / "r.db")))
        a = await registry.register(**model("a", metrics={"acc": 0.9}, tags=["math", "v2"]))
        b = await registry.register(**model("b", metrics={"acc": 0.7}, tags=["math"]))
        c = await registry.register(**model("c", recipe="rl", tags=["math", "v2"]))
        d = await registry.register(**model("d", metrics={"acc": 0.8}, base_model="other"))
        await registry.promote(b.id, "staging")
        assert [m.id for m in await registry.list()] == [d.id, c.id, b.id, a.id]
        assert [m.id for m in await registry.list(stage="staging")] == [b.id]
        assert [m.id for m in await registry.list(name="a")] == [a.id]
        assert len(await registry.list(limit=2)) == 2
        assert [m.id for m in await registry.find(tags=("math", "v2"))] == [c.id, a.id]
        assert [m.id for m in await registry.find(recipe="rl")] == [c.id]
        assert [m.id for m in await registry.find(base_model="other")] == [d.id]
        assert [m.id for m in await registry.find(metric=("acc", ">=", 0.8))] == [d.id, a.id]
        top = await registry.find_for_ensemble("acc", top_n=2)
        assert [m.id for m in top] == [a.id, d.id]  # c lacks the metric: left out
        assert [m.id for m in await registry.find_for_ensemble("acc", tags=("math",))] == [
            a.id,
            b.id,
        ]
        assert (await registry.find_for_ensemble("acc", mode="min"))[0].id == b.id


async def test_update_metrics_merges(tmp_path: Path) -> None:
    async with open_runtime() as rt:
        registry = ModelRegistryClient(await rt.spawn(ModelRegistry(tmp_path / "r.db")))
        record = await registry.register(**model(metrics={"acc": 0.5, "loss": 1.0}))
        updated = await registry.update_metrics(record.id, {"acc": 0.75, "bleu": 0.25})
        assert updated.metrics == {"acc": 0.75, "loss": 1.0, "bleu": 0.25}


async def test_promotion_moves_forward_one_stage_or_to_archived(tmp_path: Path) -> None:
    async with open_runtime() as rt:
        registry = ModelRegistryClient(await rt.spawn(ModelRegistry(tmp_path / "r.db")))
        record = await registry.register(**model())
        with pytest.raises(InvalidPromotion, match="staging"):
            await registry.promote(record.id, "production")
        assert (await registry.promote(record.id, "staging")).stage == "staging"
        assert (await registry.promote(record.id, "production")).stage == "production"
        with pytest.raises(InvalidPromotion):
            await registry.promote(record.id, "experiment")
        assert (await registry.promote(record.id, "archived")).stage == "archived"
        with pytest.raises(InvalidPromotion, match="final"):
            await registry.promote(record.id, "archived")
        other = await registry.register(**model("o"))
        assert (await registry.promote(other.id, "archived")).stage == "archived"


async def test_lineage_and_cycle_refusal(tmp_path: Path) -> None:
    async with open_runtime() as rt:
        registry = ModelRegistryClient(await rt.spawn(ModelRegistry(tmp_path / "r.db")))
        root = await registry.register(**model("root"))
        child = await registry.register(**model("child", parent=root.id))
        grandchild = await registry.register(**model("grandchild", parent=child.id))
        other = await registry.register(**model("other"))
        await registry.add_parent(grandchild.id, other.id)
        assert [m.id for m in await registry.ancestors(grandchild.id)] == [
            child.id,
            other.id,
            root.id,
        ]
        assert [m.id for m in await registry.descendants(root.id)] == [child.id, grandchild.id]
        with pytest.raises(CycleDetected):
            await registry.add_parent(root.id, grandchild.id)
        with pytest.raises(CycleDetected):
            await registry.add_parent(root.id, root.id)
        with pytest.raises(ModelNotFound):
            await registry.register(**model("orphan", parent=12345))
        assert await registry.ancestors(root.id) == []


async def test_state_survives_actor_and_process_restarts(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with open_runtime() as rt:
        ref = await rt.spawn(ModelRegistry(path))
        registry = ModelRegistryClient(ref)
        parent = await registry.register(**model("p"))
        child = await registry.register(**model("c", parent=parent.id, metrics={"acc": 1.0}))
        await ref.stop()
        registry = ModelRegistryClient(await rt.spawn(ModelRegistry(path)))  # a new incarnation
        assert await registry.get(child.id) == child
    store = RegistryStore(path)  # as a new process would open it
    try:
        assert [m.id for m in store.ancestors(child.id)] == [parent.id]
        with pytest.raises(DuplicateConfig):
            store.register(**model("c2", training_config=child.training_config))
    finally:
        store.close()


async def test_export_import_round_trip(tmp_path: Path) -> None:
    async with open_runtime() as rt:
        source = ModelRegistryClient(await rt.spawn(ModelRegistry(tmp_path / "a.db")))
        parent = await source.register(**model("p", tags=["x"]))
        await source.register(**model("c", parent=parent.id, metrics={"acc": 0.5}))
        await source.promote(parent.id, "staging")
        exported = await source.export_json()

        target = ModelRegistryClient(await rt.spawn(ModelRegistry(tmp_path / "b.db")))
        imported = await target.import_json(exported)
        assert [(m.name, m.stage, m.metrics, m.tags) for m in imported] == [
            ("p", "staging", {}, ("x",)),
            ("c", "experiment", {"acc": 0.5}, ()),
        ]
        assert [m.name for m in await target.ancestors(imported[1].id)] == ["p"]
        assert imported[1].parent_id == imported[0].id
        with pytest.raises(AlreadyExists):  # a second import conflicts and imports nothing
            await target.import_json(exported)
        assert len(await target.list()) == 2


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=6))
@settings(max_examples=50)
def test_config_hash_ignores_key_order(config: dict[str, Any]) -> None:
    reordered = dict(reversed(list(config.items())))
    assert config_hash(reordered) == config_hash(config)


REGISTER_FOREVER = textwrap.dedent(
    """
    import sys
    from crucible.training import RegistryStore

    store = RegistryStore(sys.argv[1])
    for i in range(10_000):
        record = store.register(
            f"m{i}", "1", "base", "sl_basic", {"i": i}, f"local://r/sampler_weights/{i}"
        )
        print(record.id, flush=True)
    """
)


def test_registered_models_survive_a_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    child = subprocess.Popen(
        [sys.executable, "-c", REGISTER_FOREVER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    acknowledged = [int(child.stdout.readline()) for _ in range(20)]
    child.send_signal(signal.SIGKILL)
    child.wait()
    store = RegistryStore(path)  # as the next process opens it
    try:
        ids = {record.id for record in store.list_models()}
        assert set(acknowledged) <= ids  # every acknowledged registration is durable
        assert store.get(acknowledged[-1]).training_config == {"i": len(acknowledged) - 1}
    finally:
        store.close()
