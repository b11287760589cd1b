"""SessionClient: the TrainingBackend protocol over the supervised Session actor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from tinker import types

from crucible.actors import ActorDead
from crucible.training.port import SamplingClient, Tokenizer, loss_args
from crucible.training.session._actor import GetStatus, SessionStatus, SetStatus, Status, Submit
from crucible.training.session._journal import Journal, Operation


class SessionClient:
    """A TrainingBackend whose operations go through the supervised Session actor.

    A recipe written for any TrainingBackend (or Tinker's TrainingClient) runs unchanged on it;
    the session survives backend failures underneath. Safe to use from many tasks.
    """

    def __init__(self, runtime: Any, name: str, journal: Journal, *, timeout: float = 60.0):
        self._runtime = runtime
        self._name = name
        self._journal = journal
        self._timeout = timeout
        self._snapshots = 0

    async def _live_session(self) -> Any:
        """The session's live incarnation, waiting through a restart; TrainingFailed if the
        tree gives up meanwhile."""
        ref = self._runtime.whereis(self._name)
        if ref is None:
            found: list[Any] = []
            with anyio.fail_after(self._timeout):
                async with anyio.create_task_group() as tg:

                    async def look() -> None:
                        found.append(await self._runtime.lookup(self._name, timeout=None))
                        tg.cancel_scope.cancel()

                    async def failed() -> None:
                        await self._journal.gave_up.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(look)
                    tg.start_soon(failed)
            ref = found[0] if found else None
        if self._journal.failure is not None:
            raise self._journal.failure
        return ref

    async def _call(self, message: Any) -> Any:
        """Call the live incarnation; one that stops before answering (a restart) passes the
        message to the next one (every message here is safe to send again: a Submit that
        was not answered was not journaled)."""
        while True:
            ref = await self._live_session()
            try:
                return await ref.call(message, timeout=self._timeout)
            except ActorDead:
                continue  # it stopped before taking the request: send it to the next one

    async def _submit(self, op: str, *args: Any) -> Operation[Any]:
        return await self._call(Submit(op, args))  # type: ignore[no-any-return]

    @property
    def tokenizer(self) -> Tokenizer:
        assert self._journal.tokenizer is not None
        return self._journal.tokenizer

    def info(self) -> types.GetInfoResponse:
        assert self._journal.info is not None
        return self._journal.info

    async def forward_backward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> Operation[types.ForwardBackwardOutput]:
        # The config is journaled with the op (a copy), so a replay after a restart uses it.
        config = None if loss_fn_config is None else dict(loss_fn_config)
        return await self._submit("forward_backward", list(data), *loss_args(loss_fn, config))

    async def forward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> Operation[types.ForwardBackwardOutput]:
        config = None if loss_fn_config is None else dict(loss_fn_config)
        return await self._submit("forward", list(data), *loss_args(loss_fn, config))

    async def optim_step(self, adam_params: types.AdamParams) -> Operation[types.OptimStepResponse]:
        return await self._submit("optim_step", adam_params)

    async def train_step(
        self, data: Sequence[types.Datum], adam_params: types.AdamParams
    ) -> tuple[Operation[types.ForwardBackwardOutput], Operation[types.OptimStepResponse]]:
        """Submit forward_backward and optim_step back to back, without waiting in between."""
        return (await self.forward_backward(data), await self.optim_step(adam_params))

    async def save_state(self, name: str) -> Operation[types.SaveWeightsResponse]:
        return await self._submit("save_state", name)

    async def load_state(
        self, path: str, with_optimizer: bool = True
    ) -> Operation[types.LoadWeightsResponse]:
        return await self._submit("load_state", path, with_optimizer)

    async def save_weights_for_sampler(
        self, name: str
    ) -> Operation[types.SaveWeightsForSamplerResponse]:
        return await self._submit("save_weights_for_sampler", name)

    async def delete_checkpoint(self, path: str) -> Operation[None]:
        return await self._submit("delete_checkpoint", path)

    async def sampling_client(self, path: str | None = None) -> Operation[SamplingClient]:
        """A client over sampler weights at ``path``; with None, a snapshot of the current
        weights is saved first (in order) so the client survives backend restarts."""
        if path is None:
            self._snapshots += 1
            saved = await (await self.save_weights_for_sampler(f"snapshot_{self._snapshots:06d}"))
            path = saved.path
        done: Operation[SamplingClient] = Operation(-1, "sampling_client", (path,))
        done.resolve(SessionSamplingClient(self, path))
        return done

    async def status(self) -> SessionStatus:
        return await self._call(GetStatus())  # type: ignore[no-any-return]

    async def set_status(self, status: Status) -> None:
        await self._call(SetStatus(status))

    async def aclose(self) -> None:
        """The tree owns the backend; closing the client only stops using it."""


class SessionSamplingClient:
    """Samples from saved weights through the session (retried on failure, survives restarts)."""

    def __init__(self, session: SessionClient, path: str) -> None:
        self._session = session
        self.path = path

    async def sample(
        self, prompt: types.ModelInput, num_samples: int, sampling_params: types.SamplingParams
    ) -> Operation[types.SampleResponse]:
        return await self._session._submit(
            "sample", self.path, prompt, num_samples, sampling_params
        )

    async def compute_logprobs(self, prompt: types.ModelInput) -> Operation[list[float | None]]:
        return await self._session._submit("compute_logprobs", self.path, prompt)
