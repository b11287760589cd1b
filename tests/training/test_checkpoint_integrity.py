"""Verified checkpoints: every local checkpoint file carries its sha256; a damaged one (bytes
flipped inside a tensor, truncated) is a CheckpointCorrupt naming the file, never loaded; a
resume passes over damaged checkpoints to the previous good one."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible._fs import remove_stale_temporaries
from crucible.actors import open_runtime
from crucible.training import CheckpointCorrupt, CheckpointNotFound
from crucible.training.backends.local import CheckpointPath, LocalBackend, LocalBackendConfig
from crucible.training.checkpoints import (
    CHECKPOINTS_FILE,
    CheckpointManager,
    CheckpointManagerClient,
    latest_verified_state_checkpoint,
    prepare_resume,
)

from .training_kit import ADAM, TINY_TASK

pytestmark = pytest.mark.anyio

MakeConfig = Callable[..., LocalBackendConfig]


def tensors(payload: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a loaded checkpoint payload, by its key path (whatever the layout)."""
    if isinstance(payload, torch.Tensor):
        return {prefix: payload}
    if isinstance(payload, dict):
        items = list(payload.items())
    elif isinstance(payload, list | tuple):
        items = list(enumerate(payload))
    else:
        return {}
    found: dict[str, torch.Tensor] = {}
    for key, value in items:
        found.update(tensors(value, f"{prefix}/{key}"))
    return found


def saved_tensors(file: Path) -> dict[str, torch.Tensor]:
    return tensors(torch.load(file, weights_only=True))  # a plain torch.load still reads it


def flip_inside_a_tensor(file: Path) -> torch.Tensor:
    """Flip one byte in the middle of the data of the largest tensor stored in ``file`` (found
    by its bytes); returns the tensor as it was."""
    tensor = max(saved_tensors(file).values(), key=lambda t: t.numel())
    data = bytearray(file.read_bytes())
    raw = tensor.detach().contiguous().numpy().tobytes()
    at = data.find(raw)
    assert at > 0 and data.find(raw, at + 1) < 0, "the tensor's bytes should be found once"
    data[at + len(raw) // 2] ^= 0x5A
    file.write_bytes(bytes(data))
    return tensor


async def train_step(backend: LocalBackend) -> None:
    await (await backend.forward_backward(TINY_TASK))
    await (await backend.optim_step(ADAM))


async def test_flipped_bytes_inside_a_tensor_are_reported_not_loaded(
    make_config: MakeConfig,
) -> None:
    async with LocalBackend(make_config()) as backend:
        await train_step(backend)
        path = (await (await backend.save_state("good"))).path
        file = CheckpointPath.parse(path).file(backend.config.checkpoint_root)
        await train_step(backend)
        before = saved_tensors(file)
        flip_inside_a_tensor(file)

        # torch alone loads the damaged tensor as other numbers: that is the danger
        after = saved_tensors(file)
        assert before.keys() == after.keys()
        assert [k for k in before if not torch.equal(before[k], after[k])], "nothing changed"

        with pytest.raises(CheckpointCorrupt, match=r"sha256") as caught:
            await (await backend.load_state(path))
        assert str(file) in str(caught.value)
        with pytest.raises(CheckpointCorrupt, match=str(file)):
            await (await backend.sampling_client(path))
        with pytest.raises(CheckpointCorrupt, match=str(file)):
            CheckpointPath.parse(path).verify(backend.config.checkpoint_root)


@given(cut=st.integers(1, 4000))
@settings(max_examples=15, deadline=None)
def test_a_truncated_checkpoint_is_reported_at_any_length(
    tmp_path_factory: pytest.TempPathFactory, cut: int
) -> None:
    import anyio

    root = tmp_path_factory.mktemp("truncated")
    config = LocalBackendConfig(checkpoint_root=root, run_id="cut", seed=0)

    async def scenario() -> None:
        async with LocalBackend(config) as backend:
            path = (await (await backend.save_state("s"))).path
            file = CheckpointPath.parse(path).file(root)
            data = file.read_bytes()
            file.write_bytes(data[: max(0, len(data) - cut)])
            with pytest.raises(CheckpointCorrupt, match=str(file)):
                CheckpointPath.parse(path).verify(root)
            with pytest.raises(CheckpointCorrupt, match="cannot be read"):
                await (await backend.load_state(path))

    anyio.run(scenario)


async def test_a_damaged_checksum_record_or_a_foreign_file_is_reported(
    make_config: MakeConfig,
) -> None:
    async with LocalBackend(make_config()) as backend:
        path = (await (await backend.save_state("s"))).path
        root = backend.config.checkpoint_root
        file = CheckpointPath.parse(path).file(root)
        sealed = file.read_bytes()
        file.write_bytes(sealed[:-30] + bytes([sealed[-30] ^ 1]) + sealed[-29:])
        with pytest.raises(CheckpointCorrupt):
            CheckpointPath.parse(path).verify(root)
        buffer = io.BytesIO()  # a plain torch file: no checksum, so not trusted
        torch.save({"format": "crucible-local-state/1"}, buffer)
        file.write_bytes(buffer.getvalue())
        with pytest.raises(CheckpointCorrupt, match="checksum record"):
            await (await backend.load_state(path))
        file.unlink()
        with pytest.raises(CheckpointNotFound):
            CheckpointPath.parse(path).verify(root)
        file.write_bytes(sealed)  # the original bytes verify and load again
        CheckpointPath.parse(path).verify(root)
        await (await backend.load_state(path))


# ---- resume: the previous good checkpoint ---------------------------------------------


async def save_steps(
    log_dir: Path, backend: LocalBackend, steps: list[int], *, sampler_after: int | None = None
) -> None:
    async with open_runtime() as rt:
        manager = CheckpointManagerClient(
            await rt.spawn(CheckpointManager(log_dir, lambda: backend))
        )
        for step in steps:
            await train_step(backend)
            await manager.save(step, {"loss": float(step)})
        if sampler_after is not None:
            await manager.save(sampler_after, kind="sampler")


def verifier(root: Path) -> Callable[[str], None]:
    return lambda path: CheckpointPath.parse(path).verify(root)


async def test_resume_passes_over_damaged_checkpoints_to_the_previous_good_one(
    tmp_path: Path, make_config: MakeConfig
) -> None:
    log_dir = tmp_path / "run"
    async with LocalBackend(make_config()) as backend:
        await save_steps(log_dir, backend, [1, 2, 3], sampler_after=4)
        root = backend.config.checkpoint_root
        files = {step: root / "test-run" / f"step_00000{step}" / "state.pt" for step in (1, 2, 3)}
        good = saved_tensors(files[1])

        intact = latest_verified_state_checkpoint(log_dir, verifier(root))
        assert intact.record is not None and intact.record.batch == 3 and not intact.damaged

        flip_inside_a_tensor(files[3])
        data = files[2].read_bytes()
        files[2].write_bytes(data[: len(data) // 2])
        found = latest_verified_state_checkpoint(log_dir, verifier(root))
        assert found.record is not None and found.record.name == "step_000001"
        assert [d.name for d in found.damaged] == ["step_000003", "step_000002"]
        assert "sha256" in found.damaged[0].reason and str(files[3]) in found.damaged[0].reason
        assert "truncated" in found.damaged[1].reason and str(files[2]) in found.damaged[1].reason
        # without a verifier (a remote backend) the files are trusted
        assert latest_verified_state_checkpoint(log_dir, None).record == intact.record

        prepared = prepare_resume(log_dir, verifier(root))
        assert prepared.record == found.record and prepared.damaged == found.damaged
        assert [r.name for r in prepared.dropped] == ["step_000004", "step_000003", "step_000002"]
        lines = (log_dir / CHECKPOINTS_FILE).read_text().splitlines()
        assert [json.loads(line)["name"] for line in lines] == ["step_000001"]

        # the resumed run loads the good checkpoint and saves the dropped steps afresh
        assert prepared.record is not None and prepared.record.state_path is not None
        await (await backend.load_state(prepared.record.state_path))
        probe = CheckpointPath.parse((await (await backend.save_state("probe"))).path)
        loaded = saved_tensors(probe.file(root))
        assert loaded.keys() == good.keys()
        assert all(torch.equal(good[key], loaded[key]) for key in good)
        await save_steps(log_dir, backend, [2, 3])
        CheckpointPath.parse("local://test-run/weights/step_000003").verify(root)
        assert prepare_resume(log_dir, verifier(root)).dropped == ()


async def test_resume_with_every_checkpoint_damaged_starts_from_scratch(
    tmp_path: Path, make_config: MakeConfig
) -> None:
    log_dir = tmp_path / "run"
    async with LocalBackend(make_config()) as backend:
        await save_steps(log_dir, backend, [1])
        (backend.config.checkpoint_root / "test-run" / "step_000001" / "state.pt").unlink()
        prepared = prepare_resume(log_dir, verifier(backend.config.checkpoint_root))
    assert prepared.record is None
    assert [d.name for d in prepared.damaged] == ["step_000001"]
    assert "does not exist" in prepared.damaged[0].reason
    assert (log_dir / CHECKPOINTS_FILE).read_text() == ""


# ---- a killed write leaves only a temporary that the resume's cleanup finds ------------

KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from crucible.training.backends.local import _files

    def die(fd):  # the checkpoint's bytes are in the temporary file, not yet renamed
        os.kill(os.getpid(), signal.SIGKILL)

    os.fsync = die
    _files.write_atomically({"format": "x"}, Path(sys.argv[1]))
    """
)


def test_a_write_killed_midway_leaves_a_temporary_that_cleanup_removes(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    destination = tmp_path / "run-1" / "step_000001" / "state.pt"
    child = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(destination)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        check=False,
    )
    assert child.returncode == -signal.SIGKILL
    assert not destination.exists()
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(leftovers) == 1
    assert remove_stale_temporaries(tmp_path) == leftovers
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
