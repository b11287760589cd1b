"""``tinker://`` paths and the run folders under the server's root.

A training run is named by its model id, ``<session>:train:<n>``, as on Tinker; its checkpoints
are ``tinker://<run>/weights/<name>`` (state) and ``tinker://<run>/sampler_weights/<name>``.
On disk the run is the local backend's run folder ``<root>/<run with ':' as '_'>/``, next to a
``run.json`` that records what the run trains (so a checkpoint can be loaded into a new model,
in a later session or a later server process).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, Literal

import attrs
import msgspec

from crucible.training import InvalidCheckpointPath

SCHEME: Final = "tinker://"
LOCAL_SCHEME: Final = "local://"
Kind = Literal["weights", "sampler_weights"]
_RUN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*")
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


class RunInfo(msgspec.Struct, frozen=True):
    """What a training run trains: enough to rebuild a model that can load its checkpoints."""

    model_id: str
    base_model: str
    lora_rank: int
    seed: int
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True


def run_folder_name(run_id: str) -> str:
    return run_id.replace(":", "_")


@attrs.frozen
class TinkerPath:
    run_id: str
    kind: Kind
    name: str

    @classmethod
    def parse(cls, path: str) -> TinkerPath:
        parts = path.removeprefix(SCHEME).split("/") if path.startswith(SCHEME) else []
        if len(parts) != 3 or parts[1] not in ("weights", "sampler_weights"):
            raise InvalidCheckpointPath(
                f"{path!r} is not a checkpoint path of this server; expected "
                f"'{SCHEME}<run>/weights/<name>' or '{SCHEME}<run>/sampler_weights/<name>'"
            )
        run_id, kind, name = parts
        if not _RUN.fullmatch(run_id) or not _NAME.fullmatch(name):
            raise InvalidCheckpointPath(
                f"{path!r}: the run and the name must be letters, digits, '_', '.' or '-'"
            )
        return cls(run_id, "weights" if kind == "weights" else "sampler_weights", name)

    @classmethod
    def from_local(cls, local_path: str, run_id: str) -> TinkerPath:
        """The tinker path of a checkpoint the local backend of ``run_id`` wrote."""
        _folder, kind, name = local_path.removeprefix(LOCAL_SCHEME).split("/")
        return cls(run_id, "weights" if kind == "weights" else "sampler_weights", name)

    @property
    def local(self) -> str:
        return f"{LOCAL_SCHEME}{run_folder_name(self.run_id)}/{self.kind}/{self.name}"

    @property
    def checkpoint_id(self) -> str:
        return f"{self.kind}/{self.name}"

    def __str__(self) -> str:
        return f"{SCHEME}{self.run_id}/{self.kind}/{self.name}"


def run_info_file(root: Path, run_id: str) -> Path:
    return root / run_folder_name(run_id) / "run.json"
