"""Checkpoint paths and files of the local backend.

Paths mirror Tinker's ``tinker://<run>/weights/<name>`` (state) and
``tinker://<run>/sampler_weights/<name>`` (sampler): ``local://<run>/weights/<name>`` is the
file ``<root>/<run>/<name>/state.pt`` and ``local://<run>/sampler_weights/<name>`` is
``<root>/<run>/<name>/sampler.pt``, so a checkpoint saved as both kinds shares one folder.
Files are written atomically (temporary file, fsync, rename), so a crash mid-save leaves the
previous file or the new one, never a torn one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import torch

from crucible.training._durable import replace_atomically
from crucible.training._errors import (
    CheckpointCorrupt,
    CheckpointNotFound,
    InvalidCheckpointPath,
)

SCHEME: Final = "local://"
CheckpointKind = Literal["weights", "sampler_weights"]
_FILE_NAMES: Final[dict[str, str]] = {"weights": "state.pt", "sampler_weights": "sampler.pt"}
_SEGMENT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def check_segment(value: str, what: str) -> str:
    """A run id or checkpoint name: letters, digits, ``_ . -``, not starting with a dot."""
    if not _SEGMENT.fullmatch(value):
        raise InvalidCheckpointPath(
            f"{what} {value!r} must be letters, digits, '_', '.' or '-' and start with a "
            "letter or digit"
        )
    return value


@attrs.frozen
class CheckpointPath:
    run_id: str
    kind: CheckpointKind
    name: str

    @classmethod
    def parse(cls, path: str) -> CheckpointPath:
        if not path.startswith(SCHEME):
            raise InvalidCheckpointPath(
                f"{path!r} is not a local backend path; expected "
                f"'{SCHEME}<run>/weights/<name>' or '{SCHEME}<run>/sampler_weights/<name>'"
            )
        parts = path.removeprefix(SCHEME).split("/")
        if len(parts) != 3 or parts[1] not in _FILE_NAMES:
            raise InvalidCheckpointPath(
                f"{path!r} must have the form '{SCHEME}<run>/weights/<name>' or "
                f"'{SCHEME}<run>/sampler_weights/<name>'"
            )
        run_id, kind, name = parts
        check_segment(run_id, "run id")
        check_segment(name, "checkpoint name")
        return cls(run_id, "weights" if kind == "weights" else "sampler_weights", name)

    def __str__(self) -> str:
        return f"{SCHEME}{self.run_id}/{self.kind}/{self.name}"

    def file(self, root: Path) -> Path:
        return root / self.run_id / self.name / _FILE_NAMES[self.kind]


def write_atomically(payload: dict[str, Any], destination: Path) -> None:
    """torch.save ``payload`` so readers see the old or the new file only."""
    replace_atomically(destination, lambda handle: torch.save(payload, handle))


def read_checkpoint(path: CheckpointPath, root: Path, expected_format: str) -> dict[str, Any]:
    """Load and check the format marker; errors name the file and what is wrong."""
    file = path.file(root)
    if not file.is_file():
        raise CheckpointNotFound(f"no checkpoint at {path} (expected the file {file})")
    try:
        with file.open("rb") as handle:
            payload = torch.load(handle, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged zip or pickle
        raise CheckpointCorrupt(f"checkpoint {path} ({file}) cannot be read: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointCorrupt(
            f"checkpoint {path} ({file}) has format {found!r}, expected {expected_format!r}"
        )
    return payload
