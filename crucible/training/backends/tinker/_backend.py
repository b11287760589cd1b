"""The ``tinker`` backend: the TrainingBackend port over the real, unmodified Tinker SDK.

How it drives the SDK, and why:

- Only the plain methods (``forward_backward``, ``optim_step``, ``save_state`` ...), never the
  deprecated ``*_async`` ones; each returns an ``APIFuture`` at once, bridged (``_bridge``) to
  a result that waits without a thread and is never cancelled by a waiter.
- No retries: the SDK already retries connection errors and 408/409/429/5xx (for up to about
  5 minutes per request, re-sending the same sequence id), so an error that reaches us is
  final for that request. The request id of an operation is the SDK's sequence id (assigned
  in call order); the backend declares ``retries_itself`` so the session does not retry it
  again with a new one.
- The first call that needs the session (``ServiceClient`` builds it lazily, synchronously,
  with retries) runs on a daemon setup thread, off the event loop.
- ``load_state`` builds a new TrainingClient with
  ``create_training_client_from_state(_with_optimizer)`` once everything submitted before it
  has finished, as the SDK asks (``TrainingClient.load_state*`` is deprecated). A backend whose
  first operation is ``load_state`` starts from that checkpoint directly: that is how a
  supervisor rebuilds a lost client from the last saved state.
- Errors become Crucible's types. A request the server refused (bad data, unknown checkpoint)
  raises InvalidDatum, CheckpointNotFound, ... and changes nothing. Any other failure of an
  operation raises BackendOpFailed (it may or may not have been applied); after such a failure
  of a state-changing operation the client has lost track of its state, and every later
  submission raises BackendCrashed: build a new backend from the last checkpoint and replay.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

import anyio
import tinker
from tinker import types

from crucible.training.backends.tinker._bridge import (
    SdkBridge,
    chain,
    in_background,
    in_sdk_context,
    settle,
    when_all_done,
)
from crucible.training.backends.tinker._config import TinkerBackendConfig
from crucible.training.backends.tinker._errors import NAMED_ERRORS, crucible_error
from crucible.training.backends.tinker._sampling import TinkerSamplingClient
from crucible.training.backends.tinker._tokenizer import HuggingFaceTokenizer
from crucible.training.port import (
    ORDERED_READS,
    STATE_OPERATIONS,
    AsyncClosing,
    BackendClosed,
    BackendError,
    BackendFuture,
    Tokenizer,
)


class TinkerBackend(AsyncClosing):
    """A TrainingBackend on Tinker (or on ``python -m crucible.tinker_server``).

    Constructing it sends nothing; the first operation connects (on a setup thread). Use it
    from one event loop, with ``async with`` or ``aclose()``.
    """

    #: The SDK already retried every failure that reaches us (connection errors, 408/409/429/
    #: 5xx, for minutes, re-sending the same sequence id, which the server answers from its
    #: record); sending the request again ourselves would give it a new sequence id and could
    #: apply it twice. So the session never retries our operations in place: a failed state
    #: operation loses this client, and the session rebuilds it from the last checkpoint.
    retries_itself: Final = True

    def __init__(self, config: TinkerBackendConfig) -> None:
        self.config = config
        self.service = tinker.ServiceClient(
            user_metadata=config.user_metadata, base_url=config.base_url, api_key=config.api_key
        )
        self._client: concurrent.futures.Future[Any] | None = None
        self._submit_lock = anyio.Lock()
        self._sdk = SdkBridge()
        self._training: list[concurrent.futures.Future[Any]] = []
        self._closed = False
        self._rest: Any = None
        self._tokenizer: Tokenizer | None = None

    @classmethod
    async def from_state(
        cls, config: TinkerBackendConfig, path: str, *, with_optimizer: bool = True
    ) -> TinkerBackend:
        """A backend whose TrainingClient is built from a ``save_state`` checkpoint
        (``create_training_client_from_state_with_optimizer`` by default)."""
        backend = cls(config)
        await (await backend.load_state(path, with_optimizer))
        return backend

    @property
    def lost(self) -> bool:
        """True once the client cannot be trusted (a state-changing op failed, or wedged)."""
        return self._sdk.lost

    # -- the TrainingClient ------------------------------------------------------------------

    def _start_client(
        self, create: Callable[[tinker.ServiceClient], Any], op: str = "create"
    ) -> concurrent.futures.Future[Any]:
        """Create a TrainingClient on the setup thread (the first call builds the session
        synchronously, with the SDK's retries)."""
        client: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                sdk_future = create(self.service).future()
            except BaseException as error:
                settle(client, None, crucible_error(op, error))
                return

            def created(finished: concurrent.futures.Future[Any]) -> None:
                error = None if finished.cancelled() else finished.exception()
                if finished.cancelled() or error is not None:
                    failure = crucible_error(op, error or RuntimeError("cancelled"))
                    settle(client, None, failure)
                else:
                    settle(client, finished.result(), None)

            sdk_future.add_done_callback(created)

        in_background(run)
        return client

    def _create_lora(self, service: tinker.ServiceClient) -> Any:
        config = self.config
        return service.create_lora_training_client(
            config.base_model,
            rank=config.lora_rank,
            seed=config.seed,
            train_mlp=config.train_mlp,
            train_attn=config.train_attn,
            train_unembed=config.train_unembed,
            user_metadata=config.user_metadata,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise BackendClosed("the tinker backend is closed; create a new one")
        if self._sdk.lost:
            raise self._sdk.crashed()

    async def _client_now(self) -> Any:
        """The current TrainingClient, creating the first one if needed (admission)."""
        if self._client is None:
            self._client = self._start_client(self._create_lora)
        return await BackendFuture(self._client)

    async def connect(self) -> None:
        """Create the TrainingClient now instead of at the first operation."""
        self._check_open()
        async with self._submit_lock:
            await self._client_now()

    async def _submit(
        self,
        op: str,
        call: Callable[[Any], Any],
        convert: Callable[[Any], Any] | None = None,
    ) -> BackendFuture[Any]:
        """Submit in call order: the lock is held from waiting for the client until the SDK
        call has handed the request to its own thread (which then keeps the order)."""
        self._check_open()
        async with self._submit_lock:
            client = await self._client_now()
            self._check_open()
            try:
                sdk_future = in_sdk_context(call, client).future()
            except Exception as error:  # the SDK's checks before sending (e.g. empty data)
                raise crucible_error(op, error) from error
            future = self._sdk.bridge(op, sdk_future, convert)
            if op in STATE_OPERATIONS or op in ORDERED_READS:
                self._training = [f for f in self._training if not f.done()] + [future]
            return BackendFuture(future)

    # -- the port ----------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            from crucible.training.backends.local import BASE_MODELS, load_tokenizer

            if self.config.base_model in BASE_MODELS:  # crucible's own server, offline
                self._tokenizer = load_tokenizer(self.config.base_model)
            elif self._client is not None and self._client.done() and not self._client.exception():
                self._tokenizer = HuggingFaceTokenizer(self._client.result().get_tokenizer())
            else:
                raise BackendError(
                    f"the tokenizer of {self.config.base_model!r} comes from the Tinker session: "
                    "await backend.connect() first"
                )
        return self._tokenizer

    def info(self) -> types.GetInfoResponse:
        """The server's answer once connected; before that, what the config asks for (with an
        empty model_id)."""
        client = self._client
        if client is not None and client.done() and client.exception() is None:
            info: types.GetInfoResponse = client.result().get_info()
            return info
        return types.GetInfoResponse(
            model_id="",
            model_data=types.ModelData(model_name=self.config.base_model),
            is_lora=True,
            lora_rank=self.config.lora_rank,
            model_name=self.config.base_model,
        )

    async def forward_backward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> BackendFuture[types.ForwardBackwardOutput]:
        # The loss and its config go to Tinker as they are: the service checks them.
        return await self._submit(
            "forward_backward",
            lambda client: client.forward_backward(list(data), loss_fn, loss_fn_config),
        )

    async def forward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str = "cross_entropy",
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> BackendFuture[types.ForwardBackwardOutput]:
        return await self._submit(
            "forward",
            lambda client: client.forward(list(data), loss_fn, loss_fn_config),
        )

    async def optim_step(
        self, adam_params: types.AdamParams
    ) -> BackendFuture[types.OptimStepResponse]:
        return await self._submit("optim_step", lambda client: client.optim_step(adam_params))

    async def save_state(self, name: str) -> BackendFuture[types.SaveWeightsResponse]:
        # overwrite=True: saving a name again replaces it, as on the local backend, so a save
        # replayed after a restart does not fail on the copy the lost client already wrote.
        return await self._submit(
            "save_state", lambda client: client.save_state(name, overwrite=True)
        )

    async def save_weights_for_sampler(
        self, name: str
    ) -> BackendFuture[types.SaveWeightsForSamplerResponse]:
        return await self._submit(
            "save_weights_for_sampler", lambda client: client.save_weights_for_sampler(name)
        )

    async def load_state(
        self, path: str, with_optimizer: bool = True
    ) -> BackendFuture[types.LoadWeightsResponse]:
        """A new TrainingClient built from ``path`` replaces the current one, after everything
        submitted before has finished."""
        self._check_open()

        def create(service: tinker.ServiceClient) -> Any:
            if with_optimizer:
                return service.create_training_client_from_state_with_optimizer(path)
            return service.create_training_client_from_state(path)

        async with self._submit_lock:
            previous = self._client
            before = [f for f in self._training if not f.done()]
            if previous is not None:
                before.append(previous)
            new_client: concurrent.futures.Future[Any] = concurrent.futures.Future()
            loaded: concurrent.futures.Future[types.LoadWeightsResponse] = (
                concurrent.futures.Future()
            )

            def created(finished: concurrent.futures.Future[Any]) -> None:
                error = finished.exception()
                if error is None:
                    client = finished.result()
                    settle(new_client, client, None)
                    settle(
                        loaded, types.LoadWeightsResponse(path=path, model_id=client.model_id), None
                    )
                    return
                settle(loaded, None, error)
                # A refused load (no such checkpoint, ...) leaves the backend as it was.
                usable = previous is not None and previous.done() and not previous.exception()
                if isinstance(error, NAMED_ERRORS) and usable:
                    assert previous is not None
                    settle(new_client, previous.result(), None)
                else:
                    settle(new_client, None, error)

            def start() -> None:
                self._start_client(create, "load_state").add_done_callback(created)

            if before:
                when_all_done(before, start)
            else:
                start()
            self._client = new_client
            future: concurrent.futures.Future[types.LoadWeightsResponse] = self._sdk.bridge(
                "load_state", loaded
            )
            self._training = [future]
            return BackendFuture(future)

    async def sampling_client(self, path: str | None = None) -> BackendFuture[TinkerSamplingClient]:
        """Over sampler (or state) weights at ``path``, or over a snapshot of the current
        weights taken in submission order (``save_weights_and_get_sampling_client``)."""

        def wrap(sampler: Any) -> TinkerSamplingClient:
            return TinkerSamplingClient(sampler, self._sdk)

        if path is None:
            return await self._submit(
                "sampling_client",
                lambda client: client.save_weights_and_get_sampling_client(),
                wrap,
            )
        if self._closed:
            raise BackendClosed("the tinker backend is closed; create a new one")
        created: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def create() -> None:  # may build the session: on the setup thread
            try:
                chain(self.service.create_sampling_client(model_path=path).future(), created)
            except BaseException as error:
                settle(created, None, error)

        in_background(create)
        return BackendFuture(self._sdk.bridge("sampling_client", created, wrap))

    async def delete_checkpoint(self, path: str) -> BackendFuture[None]:
        """Through the REST API; deleting a missing checkpoint is not an error."""
        if self._closed:
            raise BackendClosed("the tinker backend is closed; create a new one")
        deleted: concurrent.futures.Future[None] = concurrent.futures.Future()

        def delete() -> None:
            try:
                if self._rest is None:  # building it fetches the client config: blocking
                    self._rest = tinker.RestClient(
                        base_url=self.config.base_url, api_key=self.config.api_key
                    )
                source = self._rest.delete_checkpoint_from_tinker_path(path).future()
            except BaseException as error:
                settle(deleted, None, error)
                return

            def finished(done: concurrent.futures.Future[Any]) -> None:
                error = done.exception()
                missing = isinstance(error, tinker.NotFoundError)
                settle(deleted, None, None if missing else error)

            source.add_done_callback(finished)

        in_background(delete)
        return BackendFuture(self._sdk.bridge("delete_checkpoint", deleted))

    async def aclose(self) -> None:
        """Wait for submitted work, then finish the Tinker session. Cancelling this stops
        waiting, not the work. A lost client's requests may never finish (a failed chunk leaves
        its turn unused, which wedges every later request): they are abandoned (cancelled in
        the SDK, harmless for a client nobody will use again) instead of waited for."""
        if self._closed:
            return
        self._closed = True
        if self.lost:
            self._sdk.abandon()
        else:
            for future in self._sdk.pending_results():
                with contextlib.suppress(Exception):  # its caller sees the error
                    await BackendFuture(future)
        status: Literal["success", "errored"] = "errored" if self.lost else "success"
        closing: concurrent.futures.Future[None] = concurrent.futures.Future()

        def close() -> None:
            try:
                self.service.close(status).result(timeout=60)
            except BaseException as error:
                settle(closing, None, error)
            else:
                settle(closing, None, None)

        in_background(close)
        with contextlib.suppress(Exception):  # best effort: the service expires it anyway
            await BackendFuture(closing)
