"""A plain synchronous torch training loop that embeds Crucible (no recipe, no async code).

    python examples/embedded_torch_loop.py [RUN_DIR]

The loop fits a small MLP to a noisy sine wave, on the trainer's own thread. Crucible runs
beside it on a background thread (``crucible.embedded()``) and, called from the loop:

- records metrics into ``RUN_DIR/metrics.jsonl`` (the store's sync facade: recording never
  waits for the disk);
- saves checkpoints through the CheckpointManager actor (``RUN_DIR/checkpoints.jsonl``, the
  tinker-cookbook format), which calls back into a tiny adapter that ``torch.save``s the model;
- registers the final model in the ModelRegistry (``RUN_DIR/registry.sqlite``).
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.to_thread
import torch
from tinker import types

import crucible
from crucible.metrics import JsonlMetricsStore
from crucible.training import CheckpointManager, ModelRegistry, TrainingBackend
from crucible.training.checkpoints import SaveCheckpoint
from crucible.training.registry import Register


class TorchModuleCheckpoints:
    """The part of the TrainingBackend port the CheckpointManager uses, for a plain module.

    The manager calls it on Crucible's thread while the trainer waits in ``call()``, so the
    model does not change under it.
    """

    def __init__(self, model: torch.nn.Module, folder: Path) -> None:
        self.model = model
        self.folder = folder

    async def _save(self, name: str, kind: str) -> str:
        path = self.folder / name / f"{kind}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {key: value.clone() for key, value in self.model.state_dict().items()}
        await anyio.to_thread.run_sync(torch.save, state, path)
        return str(path)

    async def save_state(self, name: str) -> Any:
        path = await self._save(name, "state")
        return _done(types.SaveWeightsResponse(path=path))

    async def save_weights_for_sampler(self, name: str) -> Any:
        path = await self._save(name, "sampler")
        return _done(types.SaveWeightsForSamplerResponse(path=path))

    async def delete_checkpoint(self, path: str) -> Any:
        await anyio.Path(path).unlink(missing_ok=True)
        return _done(None)


async def _done(value: Any) -> Any:
    """The second stage of a two-stage operation, already finished (the save ran above)."""
    return value


def main(run_dir: Path) -> dict[str, float]:
    torch.manual_seed(0)
    xs = torch.linspace(-math.pi, math.pi, 256).unsqueeze(1)
    ys = torch.sin(xs) + 0.05 * torch.randn_like(xs)
    model = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    run_id = run_dir.name
    store = JsonlMetricsStore(run_dir / "metrics.jsonl")
    adapter = TorchModuleCheckpoints(model, run_dir / "checkpoints")

    with crucible.embedded() as rt:
        # The manager asks for "a TrainingBackend"; the adapter has the methods it calls.
        backend = cast("TrainingBackend", adapter)
        checkpoints = rt.spawn(CheckpointManager(run_dir, lambda: backend))
        registry = rt.spawn(ModelRegistry(run_dir / "registry.sqlite"))
        loss = math.inf
        for step in range(1, 301):  # the trainer's own, ordinary loop
            optimizer.zero_grad()
            loss_tensor = torch.nn.functional.mse_loss(model(xs), ys)
            loss_tensor.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            loss = float(loss_tensor.detach())
            store.sync.record(run_id, "train/loss", loss, step=step)
            if step % 100 == 0:
                store.sync.flush()  # the metrics up to here are on disk before the checkpoint
                saved = checkpoints.call(
                    SaveCheckpoint(
                        step, metrics={"train_loss": loss}, kind="both", final=step == 300
                    )
                )
                print(f"step {step}: loss {loss:.4f}, checkpoint {saved.name}")
        model_record = registry.call(
            Register(
                name="sine-mlp",
                version=run_id,
                base_model="none",
                recipe="examples/embedded_torch_loop.py",
                training_config={"lr": 1e-2, "steps": 300, "hidden": 32, "run": str(run_dir)},
                checkpoint_path=saved.sampler_path or "",
                metrics={"train_loss": loss},
                tags=("example",),
            )
        )
        print(
            f"registered {model_record.name} version {model_record.version} (id {model_record.id})"
        )
    store.sync.close()
    return {"train_loss": loss, "model_id": float(model_record.id)}


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "sine"
    target.mkdir(parents=True, exist_ok=True)
    main(target)
    print(f"run directory: {target}")
