"""Checkpoint paths map onto the local backend's path type; run records are written durably."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.tinker_server import RunningServer
from crucible.tinker_server._models import RunInfo
from crucible.tinker_server._paths import TinkerPath
from crucible.tinker_server._records import CheckpointMeta, Records
from crucible.training import CheckpointError

from .tinker_kit import BASE_MODEL, service_client


def test_a_tinker_path_names_a_checkpoint_of_the_run_folder() -> None:
    path = TinkerPath.parse("tinker://00000000000000ab:train:0/sampler_weights/step-3")
    assert path.run_id == "00000000000000ab:train:0"
    assert str(path.local) == "local://00000000000000ab_train_0/sampler_weights/step-3"
    assert path.local.file(Path("/root")) == Path(
        "/root/00000000000000ab_train_0/step-3/sampler.pt"
    )
    assert str(path) == "tinker://00000000000000ab:train:0/sampler_weights/step-3"
    assert path.checkpoint_id == "sampler_weights/step-3"
    assert TinkerPath.from_local(str(path.local), path.run_id) == path


@pytest.mark.parametrize(
    "text",
    [
        "local://run/weights/a",
        "tinker://run/weights",
        "tinker://run/optimizer/a",
        "tinker://run/weights/a/b",
        "tinker://:run/weights/a",
        "tinker://run/weights/.hidden",
        "tinker://run/weights/a:b",
    ],
)
def test_paths_that_are_not_checkpoints_of_this_server_are_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        TinkerPath.parse(text)


def test_a_run_record_is_replaced_atomically(tmp_path: Path, monkeypatch: Any) -> None:
    records = Records(tmp_path)
    first = RunInfo("000000000000000a:train:0", BASE_MODEL, lora_rank=4, seed=1)
    second = msgspec.structs.replace(first, seed=2)

    def crash(*_args: Any) -> None:
        raise OSError("killed before the rename")

    async def main() -> None:
        await records.write_run(first)
        assert records.read_run_now("000000000000000a:train:0") == first
        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="killed"):
            await records.write_run(second)
        monkeypatch.undo()
        assert records.read_run_now("000000000000000a:train:0") == first

    anyio.run(main)
    assert sorted(p.name for p in (tmp_path / "000000000000000a_train_0").iterdir()) == ["run.json"]


def test_a_new_model_records_its_run_beside_its_checkpoints(server: RunningServer) -> None:
    client = service_client(server.base_url)
    training = client.create_lora_training_client(BASE_MODEL, rank=4, seed=7).result()
    saved = training.save_state("first").result()
    client.close("success").result()
    path = TinkerPath.parse(saved.path)
    folder = server.config.root / path.local.run_id
    run = msgspec.json.decode((folder / "run.json").read_bytes(), type=RunInfo)
    session_id = training.model_id.split(":")[0]
    assert run == RunInfo(
        training.model_id,
        BASE_MODEL,
        lora_rank=4,
        seed=7,
        session_id=session_id,
        created=run.created,
    )
    assert path.local.file(server.config.root).is_file()
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@settings(deadline=None, max_examples=30)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["weights/a", "weights/b", "sampler_weights/a"]),
            st.none() | st.dictionaries(st.sampled_from("xyz"), st.text(max_size=3), max_size=2),
        ),
        max_size=8,
    )
)
def test_checkpoint_metadata_is_a_durable_dict(
    tmp_path_factory: pytest.TempPathFactory, updates: list[tuple[str, dict[str, str] | None]]
) -> None:
    """Each update records (a dict) or forgets (None) one checkpoint's metadata; the file
    always reads back as the same updates applied to a plain dict."""
    records = Records(tmp_path_factory.mktemp("meta"))
    run_id = "000000000000000a:train:0"
    expected: dict[str, CheckpointMeta] = {}

    async def main() -> None:
        for checkpoint_id, metadata in updates:
            meta = None if metadata is None else CheckpointMeta(1.0, user_metadata=metadata)
            await records.set_metadata(run_id, checkpoint_id, meta)
            if meta is None:
                expected.pop(checkpoint_id, None)
            else:
                expected[checkpoint_id] = meta
            assert records.metadata(run_id) == expected

    anyio.run(main)
