"""``tinker://`` paths: the names the SDK sees for the local backend's checkpoints.

A training run is named by its model id, ``<session>:train:<n>``, as on Tinker; its checkpoints
are ``tinker://<run>/weights/<name>`` (state) and ``tinker://<run>/sampler_weights/<name>``.
The checkpoint itself is the local backend's ``CheckpointPath`` in the run's folder, named
after the run with ``':'`` as ``'_'`` (the local backend's run ids have no colons); the local
path type owns the ``local://`` syntax, the file layout and the rules for names.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from crucible.training import CheckpointNotFound, InvalidCheckpointPath
from crucible.training.backends.local import PATH_KINDS, CheckpointPath, PathKind

SCHEME: Final = "tinker://"
#: Every run this server creates is named ``<session id>:train:<model seq id>``; nothing else is
#: a run id, so no client-sent id can name a folder outside the root (``..``, ``a/b``, ``.``).
RUN_ID: Final = re.compile(r"[0-9a-f]{16}:train:[0-9]{1,9}")


def check_run_id(run_id: str) -> str:
    """``run_id`` if this server could have created it, else ``CheckpointNotFound`` (answered
    404, touching no file)."""
    if not RUN_ID.fullmatch(run_id):
        raise CheckpointNotFound(
            f"no training run {run_id!r} on this server: its runs are named "
            "'<session id>:train:<n>' (16 hex digits, ':train:', a number)"
        )
    return run_id


def run_folder_name(run_id: str) -> str:
    """The local backend's run id (its folder under the server's root) for a Tinker run."""
    return check_run_id(run_id).replace(":", "_")


@attrs.frozen
class TinkerPath:
    run_id: str
    local: CheckpointPath

    @classmethod
    def parse(cls, path: str) -> TinkerPath:
        parts = path.removeprefix(SCHEME).split("/") if path.startswith(SCHEME) else []
        if len(parts) != 3 or parts[1] not in PATH_KINDS:
            raise InvalidCheckpointPath(
                f"{path!r} is not a checkpoint path of this server; expected "
                f"'{SCHEME}<run>/weights/<name>' or '{SCHEME}<run>/sampler_weights/<name>'"
            )
        run_id, kind, name = parts
        check_run_id(run_id)
        local = CheckpointPath(
            run_folder_name(run_id), "weights" if kind == "weights" else "sampler_weights", name
        )
        try:
            CheckpointPath.parse(str(local))  # the local path type checks the run and the name
        except InvalidCheckpointPath:
            raise InvalidCheckpointPath(
                f"{path!r}: the run and the name must be letters, digits, '_', '.' or '-'"
            ) from None
        return cls(run_id, local)

    @classmethod
    def from_local(cls, local_path: str, run_id: str) -> TinkerPath:
        """The tinker path of a checkpoint the local backend of ``run_id`` wrote."""
        return cls(run_id, CheckpointPath.parse(local_path))

    @property
    def kind(self) -> PathKind:
        return self.local.kind

    @property
    def checkpoint_id(self) -> str:
        return f"{self.local.kind}/{self.local.name}"

    def __str__(self) -> str:
        return f"{SCHEME}{self.run_id}/{self.checkpoint_id}"
