"""The state of the server, independent of HTTP: its sessions, training, checkpoints and
sampling, over one task group that runs the accepted work."""

from __future__ import annotations

from typing import Any

from anyio.abc import TaskGroup

from crucible.tinker_server._checkpoints import Checkpoints
from crucible.tinker_server._config import ServerConfig
from crucible.tinker_server._records import Records
from crucible.tinker_server._sampling import Sampling
from crucible.tinker_server._served import link_hf_cache
from crucible.tinker_server._sessions import Sessions
from crucible.tinker_server._training import Training


class TinkerService:
    def __init__(self, config: ServerConfig, task_group: TaskGroup) -> None:
        self.config = config
        if config.hf_cache is not None:
            link_hf_cache(config.served, config.hf_cache)
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
                "max_context_length": model.context_length,
                "trainable": True,
                "sampleable": True,
            }
            for name, model in self.config.served.models.items()
        ]

    async def aclose(self) -> None:
        await self.sessions.aclose()
        await self.sampling.aclose()
