"""Training models of the server: what each trains, its local backend, fed in seq_id order.

The SDK numbers each TrainingClient's requests (seq_id 1, 2, ...; creation is 0) and may send
them out of order: the chunks of one forward_backward go out concurrently, the first chunk
last. A model buffers what arrives early and submits to its backend strictly in seq_id order,
so chunks accumulate gradients exactly as one batch split by the client would. A resubmitted
seq_id (the SDK retrying after a lost answer) gets the request id it got the first time, so
nothing is applied twice.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec

from crucible.tinker_server._config import ServerConfig
from crucible.tinker_server._errors import ServiceError, category, describe
from crucible.tinker_server._futures import FutureTable, Outcome, Pending
from crucible.training.backends.local import (
    LocalBackend,
    LocalBackendConfig,
    LoraConfig,
)


class RunInfo(msgspec.Struct, frozen=True):
    """What a training run trains: enough to rebuild a model that can load its checkpoints."""

    model_id: str
    base_model: str
    lora_rank: int
    seed: int
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True
    session_id: str = ""
    user_metadata: dict[str, str] | None = None
    created: float = 0.0  # seconds since the epoch


def local_lora(run: RunInfo) -> LoraConfig:
    """Tinker's LoRA switches, which the local backend maps onto each architecture's
    attention, MLP and output head. alpha = 2 * rank (the local backend's default scale)."""
    return LoraConfig(
        rank=run.lora_rank,
        alpha=2.0 * run.lora_rank,
        train_attn=run.train_attn,
        train_mlp=run.train_mlp,
        train_unembed=run.train_unembed,
    )


def check_base_model(config: ServerConfig, name: str) -> None:
    """Raises UnknownBaseModel unless the server serves ``name`` (by name or directory)."""
    config.served.lookup(name)


def new_backend(config: ServerConfig, run: RunInfo, folder: str) -> LocalBackend:
    """A local backend for ``run`` whose checkpoints go to ``folder`` under the root (see
    ``run_folder_name``; blocking: it builds the model)."""
    return LocalBackend(
        LocalBackendConfig(
            base_model=config.served.source(run.base_model),
            lora=local_lora(run),
            seed=run.seed,
            checkpoint_root=config.root,
            run_id=folder,
            num_threads=config.torch_threads,
        )
    )


Submit = Callable[[Pending], Awaitable[None]]


class TrainingModel:
    def __init__(self, model_id: str, session_id: str, run: RunInfo, backend: LocalBackend) -> None:
        self.model_id = model_id
        self.session_id = session_id
        self.run = run
        self.backend = backend
        self.last_request = run.created  # seconds since the epoch
        self.next_seq = 1  # seq 0 is the creation (or the load that created it)
        self._waiting: dict[int, tuple[Pending, Submit]] = {}
        # Each seq_id's record: the request id it was accepted under, or the refusal it got, so
        # a repeat of the same seq_id is answered from the record and never applied twice.
        self._accepted: dict[int, str | ServiceError] = {}
        self._lock = anyio.Lock()

    @property
    def run_id(self) -> str:
        return self.model_id

    @property
    def buffered(self) -> list[int]:
        """seq_ids that arrived early and wait for an earlier one."""
        return sorted(self._waiting)

    async def accept(self, seq_id: int | None, futures: FutureTable, submit: Submit) -> str:
        """Queue one request; returns its request id. ``submit`` runs when its turn comes."""
        if seq_id is None or seq_id < 1:
            raise ServiceError(400, f"seq_id must be an integer >= 1 for {self.model_id}")
        self.last_request = time.time()
        async with self._lock:
            known = self._accepted.get(seq_id)
            if isinstance(known, ServiceError):
                raise known
            if known is not None:
                return known
            if seq_id < self.next_seq:
                raise ServiceError(400, f"seq_id {seq_id} of {self.model_id} was already applied")
            pending = futures.new()
            self._accepted[seq_id] = pending.request_id
            self._waiting[seq_id] = (pending, submit)
            await self._drain()
            return pending.request_id

    async def refuse(self, seq_id: int, refusal: ServiceError) -> None:
        """Record that the request numbered ``seq_id`` was refused before it was queued (bad
        body, unknown endpoint, ...). Its number is used up, so the later requests of the
        model run; the same seq_id sent again gets the same refusal."""
        async with self._lock:
            if seq_id < self.next_seq or seq_id in self._accepted:
                return  # already applied or accepted: a refusal cannot undo it
            self._accepted[seq_id] = refusal
            self._waiting[seq_id] = (Pending(f"refused-{seq_id}"), _nothing)
            await self._drain()

    async def _drain(self) -> None:
        # Submitting to the backend only queues work on its thread, so holding the lock while
        # draining is brief and keeps the backend's order equal to seq_id order.
        while self.next_seq in self._waiting:
            ready, run = self._waiting.pop(self.next_seq)
            self.next_seq += 1
            try:
                await run(ready)
            except Exception as error:  # every accepted request must get an outcome
                ready.resolve(Outcome.failed(describe(error), category(error)))


async def _nothing(_pending: Pending) -> None:
    """The turn of a refused request: nothing to run."""
