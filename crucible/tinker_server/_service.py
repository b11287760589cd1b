"""The state of the server, independent of HTTP: its sessions, training, checkpoints and
sampling, over one task group that runs the accepted work."""

from __future__ import annotations

from typing import Any

from anyio.abc import TaskGroup

from crucible.tinker_server._checkpoints import Checkpoints
from crucible.tinker_server._config import ServerConfig
from crucible.tinker_server._records import Records
from crucible.tinker_server._sampling import Sampling
from crucible.tinker_server._sessions import Sessions
from crucible.tinker_server._training import Training
from crucible.training.backends.local import BASE_MODELS


class TinkerService:
    def __init__(self, config: ServerConfig, task_group: TaskGroup) -> None:
        self.records = Records(config.root)
        self.sessions = Sessions(config, task_group, self.records)
        task_group.start_soon(self.sessions.expire_idle_sessions)
        self.checkpoints = Checkpoints(config, self.sessions, self.records)
        self.training = Training(config, self.sessions, self.checkpoints)
        self.sampling = Sampling(config, self.sessions, self.checkpoints)

    def capabilities(self) -> list[dict[str, Any]]:
        return [
            {
                "model_name": name,
                "max_context_length": spec.config.context_length,
                "trainable": True,
                "sampleable": True,
            }
            for name, spec in sorted(BASE_MODELS.items())
        ]

    async def aclose(self) -> None:
        await self.sessions.aclose()
        await self.sampling.aclose()
