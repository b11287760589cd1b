"""Checkpoint paths map onto the local backend's path type; run records are written durably."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from crucible.tinker_server import RunningServer
from crucible.tinker_server._models import RunInfo
from crucible.tinker_server._paths import TinkerPath
from crucible.tinker_server._records import Records
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
