"""``local://`` checkpoint paths: the one parser of them (no torch needed).

Paths mirror Tinker's ``tinker://<run>/weights/<name>`` (state) and
``tinker://<run>/sampler_weights/<name>`` (sampler): ``local://<run>/weights/<name>`` is the
file ``<root>/<run>/<name>/state.pt`` and ``local://<run>/sampler_weights/<name>`` is
``<root>/<run>/<name>/sampler.pt``, so a checkpoint saved as both kinds shares one folder.
``CheckpointPath.verify`` checks a checkpoint file against the sha256 sealed into it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, Literal

import attrs

from crucible.training.backends.local._checksum import verify_sealed
from crucible.training.port import InvalidCheckpointPath

SCHEME: Final = "local://"
PathKind = Literal["weights", "sampler_weights"]
PATH_KINDS: Final[tuple[PathKind, ...]] = ("weights", "sampler_weights")
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
    """A checkpoint of the local backend: ``local://<run_id>/<kind>/<name>``."""

    run_id: str
    kind: PathKind
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
        """Where the checkpoint lives under the backend's ``checkpoint_root``."""
        return root / self.run_id / self.name / _FILE_NAMES[self.kind]

    def verify(self, root: Path) -> None:
        """Check the checkpoint's file under ``root`` against the sha256 sealed into it,
        without loading it: CheckpointNotFound if the file is missing, CheckpointCorrupt
        (naming the file and what is wrong) if it is truncated or its bytes changed."""
        file = self.file(root)
        verify_sealed(file, f"checkpoint {self} ({file})")
