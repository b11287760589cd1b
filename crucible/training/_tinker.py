"""The ``tinker`` backend: the TrainingBackend port over the real, unmodified Tinker SDK.

How it drives the SDK, and why:

- Only the plain methods (``forward_backward``, ``optim_step``, ``save_state`` ...), never the
  deprecated ``*_async`` ones; each returns an ``APIFuture`` at once. The SDK runs all its work
  on its own thread and asyncio loop, so its futures are bridged through their
  ``concurrent.futures.Future``: its done-callback wakes the caller's loop, asyncio or trio,
  so waiting blocks neither that loop nor a thread.
- Nothing here ever cancels an SDK future. A caller that is cancelled or times out only stops
  waiting: cancelling a training future that is still queued wedges its TrainingClient for
  good (its seq_id is never sent, so every later request waits forever).
- No retries: the SDK already retries connection errors and 408/409/429/5xx (for up to about
  5 minutes per request), so an error that reaches us is final for that request.
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

import asyncio
import concurrent.futures
import contextlib
import contextvars
import threading
from collections.abc import Callable, Generator, Sequence
from types import TracebackType
from typing import Any, Final, Generic, Literal, TypeVar

import anyio
import attrs
import sniffio
import tinker
from tinker import types

from crucible.training._errors import (
    BackendClosed,
    BackendCrashed,
    BackendError,
    BackendOpFailed,
    CheckpointCorrupt,
    CheckpointMismatch,
    CheckpointNotFound,
    InvalidCheckpointPath,
    InvalidDatum,
    UnknownBaseModel,
    UnsupportedLossFn,
)
from crucible.training._protocol import Tokenizer

T = TypeVar("T")
U = TypeVar("U")

#: Operations that change the model: after one fails, nobody knows the model's state.
_STATE_OPS: Final = frozenset({"forward_backward", "optim_step", "load_state"})
#: Operations whose 404 means "no such checkpoint" rather than "no such model".
_PATH_OPS: Final = frozenset({"load_state", "sampling_client", "delete_checkpoint", "create"})
#: Errors a server names in its message (the local server puts the class name first).
_NAMED_ERRORS: Final[tuple[type[BackendError], ...]] = (
    InvalidDatum,
    UnsupportedLossFn,
    CheckpointNotFound,
    CheckpointMismatch,
    CheckpointCorrupt,
    InvalidCheckpointPath,
    UnknownBaseModel,
)


class TinkerAuthError(BackendError):
    """The Tinker service refused the API key (or none was found)."""


@attrs.frozen
class TinkerBackendConfig:
    """What to train on Tinker, and where.

    ``base_url`` None uses ``TINKER_BASE_URL``, then the Tinker service; ``api_key`` None uses
    ``TINKER_API_KEY``, then the SDK's stored credentials. ``seed`` fixes the LoRA
    initialisation (None lets the service pick one).
    """

    base_model: str
    lora_rank: int = 32
    seed: int | None = None
    train_mlp: bool = True
    train_attn: bool = True
    train_unembed: bool = True
    base_url: str | None = None
    api_key: str | None = None
    user_metadata: dict[str, str] | None = None


def _named_error(message: str) -> type[BackendError] | None:
    for error_type in _NAMED_ERRORS:
        if error_type.__name__ in message:
            return error_type
    return None


def crucible_error(op: str, error: BaseException) -> BackendError:
    """The Crucible error for an SDK failure of ``op``."""
    if isinstance(error, BackendError):
        return error
    message = f"{op} failed on Tinker: {type(error).__name__}: {error}"
    if isinstance(error, (tinker.AuthenticationError, tinker.PermissionDeniedError)):
        return TinkerAuthError(f"{message}; check TINKER_API_KEY (or api_key=)")
    if isinstance(error, tinker.TinkerError) and "API key" in str(error):
        return TinkerAuthError(f"{message}; set TINKER_API_KEY (or api_key=)")
    # A 404 for the model itself means the server no longer knows this client: it is lost.
    unknown_model = isinstance(error, tinker.NotFoundError) and op not in _PATH_OPS
    rejected = (
        isinstance(error, tinker.RequestFailedError)
        and error.category == types.RequestErrorCategory.User
    ) or (
        isinstance(error, tinker.APIStatusError)
        and error.status_code in (400, 404, 413, 422)
        and not unknown_model
    )
    if rejected:
        named = _named_error(str(error))
        if named is not None:
            return named(message)
        if op in ("forward_backward", "forward"):
            return InvalidDatum(message)
        if op == "create":
            return UnknownBaseModel(message)
        if op in _PATH_OPS:
            not_found = isinstance(error, tinker.NotFoundError)
            return (CheckpointNotFound if not_found else InvalidCheckpointPath)(message)
        return BackendOpFailed(message)
    if isinstance(error, ValueError) and op in ("forward_backward", "forward"):
        return InvalidDatum(message)  # the SDK's own checks, before anything is sent
    if isinstance(error, RuntimeError) and "poisoned" in str(error):
        return BackendCrashed(f"{message}; build a new backend from the last checkpoint")
    # Connection errors and 5xx after the SDK's own retries, a failed promise (server or
    # unknown category), a lost promise: the request may or may not have been applied.
    return BackendOpFailed(f"{message}; it may or may not have been applied")


def _in_sdk_context(call: Callable[..., T], *args: Any) -> T:
    """Call into the SDK from an empty context: the SDK's loop runs its tasks in a copy of
    the caller's context, and trio's marker in it (sniffio) would make httpx, on the SDK's
    asyncio loop, believe it runs under trio."""
    return contextvars.Context().run(call, *args)


class TinkerFuture(Generic[T]):
    """The result of a submitted operation; await it any number of times, from asyncio or
    trio. Waiting uses no thread: the SDK's completion callback wakes the waiting loop
    (``call_soon_threadsafe`` / ``run_sync_soon``). A cancelled waiter only stops waiting."""

    __slots__ = ("_future",)

    def __init__(self, future: concurrent.futures.Future[T]) -> None:
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    async def result_async(self) -> T:
        if not self._future.done():
            woken = anyio.Event()
            self._future.add_done_callback(_waker(woken))
            await woken.wait()
        return self._future.result()

    def __await__(self) -> Generator[Any, None, T]:
        return self.result_async().__await__()


def _waker(event: anyio.Event) -> Callable[[concurrent.futures.Future[Any]], None]:
    """A done-callback (run on whatever thread completes the future) that sets ``event`` on
    the current event loop without blocking that thread."""
    if sniffio.current_async_library() == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()

        def wake_trio(_future: concurrent.futures.Future[Any]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(event.set)

        return wake_trio
    loop = asyncio.get_running_loop()

    def wake_asyncio(_future: concurrent.futures.Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(event.set)

    return wake_asyncio


def _in_background(work: Callable[[], None]) -> None:
    """Run blocking SDK setup (building the session retries for minutes when the service is
    down) on a daemon thread, so that it never holds up the event loop or interpreter exit."""
    threading.Thread(target=work, name="crucible-tinker-setup", daemon=True).start()


def _settle(
    target: concurrent.futures.Future[Any], value: Any, error: BaseException | None
) -> None:
    try:
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass  # already failed by _wedge


class _HuggingFaceTokenizer:
    """The Tokenizer port over the tokenizer the SDK loads for a Tinker base model."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(tokens)))


class TinkerSamplingClient:
    """Samples through an SDK SamplingClient; failures become Crucible errors."""

    def __init__(self, sampler: Any, backend: TinkerBackend) -> None:
        self.sampler = sampler
        self._backend = backend

    async def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
    ) -> TinkerFuture[types.SampleResponse]:
        sample = self.sampler.sample
        future = _in_sdk_context(sample, prompt, num_samples, sampling_params).future()
        return TinkerFuture(self._backend._bridge("sample", future))

    async def compute_logprobs(self, prompt: types.ModelInput) -> TinkerFuture[list[float | None]]:
        future = _in_sdk_context(self.sampler.compute_logprobs, prompt).future()
        return TinkerFuture(self._backend._bridge("compute_logprobs", future))


class TinkerBackend:
    """A TrainingBackend on Tinker (or on ``python -m crucible.tinker_server``).

    Constructing it sends nothing; the first operation connects (on a setup thread). Use it
    from one event loop, with ``async with`` or ``aclose()``.
    """

    def __init__(self, config: TinkerBackendConfig) -> None:
        self.config = config
        self.service = tinker.ServiceClient(
            user_metadata=config.user_metadata, base_url=config.base_url, api_key=config.api_key
        )
        self._client: concurrent.futures.Future[Any] | None = None
        self._submit_lock = anyio.Lock()
        self._lock = threading.Lock()  # guards _pending, touched from the SDK's thread
        # Each pending result (target) and the SDK future it waits on (source).
        self._pending: dict[concurrent.futures.Future[Any], concurrent.futures.Future[Any]] = {}
        self._training: list[concurrent.futures.Future[Any]] = []
        self._lost: str | None = None
        self._wedged: str | None = None
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

    # -- bridging SDK futures ----------------------------------------------------------------

    def _bridge(
        self,
        op: str,
        source: concurrent.futures.Future[T],
        convert: Callable[[T], U] | None = None,
    ) -> concurrent.futures.Future[U]:
        """A future that completes with ``source``'s result (converted) or a Crucible error.

        Cancelling the returned future does nothing to ``source``; if ``source`` itself is
        ever cancelled, the TrainingClient is wedged and every pending operation fails."""
        target: concurrent.futures.Future[U] = concurrent.futures.Future()
        with self._lock:
            self._pending[target] = source

        def done(finished: concurrent.futures.Future[T]) -> None:
            with self._lock:
                self._pending.pop(target, None)
            if finished.cancelled():
                self._wedge(f"a queued {op} request was cancelled")
                return
            failure = finished.exception()
            if failure is not None:
                error = crucible_error(op, failure)
                if op in _STATE_OPS and not isinstance(error, _NAMED_ERRORS):
                    self._lost = self._lost or str(error)
                _settle(target, None, error)
                return
            try:
                value: Any = finished.result()
                _settle(target, convert(value) if convert is not None else value, None)
            except Exception as error:
                _settle(target, None, crucible_error(op, error))

        source.add_done_callback(done)
        return target

    def _wedge(self, reason: str) -> None:
        self._wedged = self._wedged or reason
        with self._lock:
            pending, self._pending = list(self._pending), {}
        for future in pending:
            _settle(future, None, self._crashed())

    def _crashed(self) -> BackendCrashed:
        why = self._wedged or self._lost
        return BackendCrashed(
            f"the Tinker TrainingClient is unusable ({why}); build a new backend from the last "
            "checkpoint and replay"
        )

    @property
    def lost(self) -> bool:
        """True once the client cannot be trusted (a state-changing op failed, or wedged)."""
        return self._lost is not None or self._wedged is not None

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
                _settle(client, None, crucible_error(op, error))
                return

            def created(finished: concurrent.futures.Future[Any]) -> None:
                error = None if finished.cancelled() else finished.exception()
                if finished.cancelled() or error is not None:
                    failure = crucible_error(op, error or RuntimeError("cancelled"))
                    _settle(client, None, failure)
                else:
                    _settle(client, finished.result(), None)

            sdk_future.add_done_callback(created)

        _in_background(run)
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
        if self._wedged is not None or self._lost is not None:
            raise self._crashed()

    async def _client_now(self) -> Any:
        """The current TrainingClient, creating the first one if needed (admission)."""
        if self._client is None:
            self._client = self._start_client(self._create_lora)
        return await TinkerFuture(self._client)

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
    ) -> TinkerFuture[Any]:
        """Submit in call order: the lock is held from waiting for the client until the SDK
        call has handed the request to its own thread (which then keeps the order)."""
        self._check_open()
        async with self._submit_lock:
            client = await self._client_now()
            self._check_open()
            try:
                sdk_future = _in_sdk_context(call, client).future()
            except Exception as error:  # the SDK's checks before sending (e.g. empty data)
                raise crucible_error(op, error) from error
            future = self._bridge(op, sdk_future, convert)
            if op in _STATE_OPS or op in ("forward", "save_state", "save_weights_for_sampler"):
                self._training = [f for f in self._training if not f.done()] + [future]
            return TinkerFuture(future)

    # -- the port ----------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            from crucible.training.local import BASE_MODELS, ByteTokenizer

            if self.config.base_model in BASE_MODELS:
                self._tokenizer = ByteTokenizer()
            elif self._client is not None and self._client.done() and not self._client.exception():
                self._tokenizer = _HuggingFaceTokenizer(self._client.result().get_tokenizer())
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
        self, data: Sequence[types.Datum], loss_fn: str = "cross_entropy"
    ) -> TinkerFuture[types.ForwardBackwardOutput]:
        return await self._submit(
            "forward_backward", lambda client: client.forward_backward(list(data), loss_fn)
        )

    async def forward(
        self, data: Sequence[types.Datum], loss_fn: str = "cross_entropy"
    ) -> TinkerFuture[types.ForwardBackwardOutput]:
        return await self._submit("forward", lambda client: client.forward(list(data), loss_fn))

    async def optim_step(
        self, adam_params: types.AdamParams
    ) -> TinkerFuture[types.OptimStepResponse]:
        return await self._submit("optim_step", lambda client: client.optim_step(adam_params))

    async def save_state(self, name: str) -> TinkerFuture[types.SaveWeightsResponse]:
        # overwrite=True: saving a name again replaces it, as on the local backend, so a save
        # replayed after a restart does not fail on the copy the lost client already wrote.
        return await self._submit(
            "save_state", lambda client: client.save_state(name, overwrite=True)
        )

    async def save_weights_for_sampler(
        self, name: str
    ) -> TinkerFuture[types.SaveWeightsForSamplerResponse]:
        return await self._submit(
            "save_weights_for_sampler", lambda client: client.save_weights_for_sampler(name)
        )

    async def load_state(
        self, path: str, with_optimizer: bool = True
    ) -> TinkerFuture[types.LoadWeightsResponse]:
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
                    _settle(new_client, client, None)
                    _settle(
                        loaded, types.LoadWeightsResponse(path=path, model_id=client.model_id), None
                    )
                    return
                _settle(loaded, None, error)
                # A refused load (no such checkpoint, ...) leaves the backend as it was.
                usable = previous is not None and previous.done() and not previous.exception()
                if isinstance(error, _NAMED_ERRORS) and usable:
                    assert previous is not None
                    _settle(new_client, previous.result(), None)
                else:
                    _settle(new_client, None, error)

            def start() -> None:
                self._start_client(create, "load_state").add_done_callback(created)

            if before:
                _when_all_done(before, start)
            else:
                start()
            self._client = new_client
            future: concurrent.futures.Future[types.LoadWeightsResponse] = self._bridge(
                "load_state", loaded
            )
            self._training = [future]
            return TinkerFuture(future)

    @staticmethod
    def _chain(
        source: concurrent.futures.Future[Any], target: concurrent.futures.Future[Any]
    ) -> None:
        def copy(finished: concurrent.futures.Future[Any]) -> None:
            error = finished.exception()
            _settle(target, None if error else finished.result(), error)

        source.add_done_callback(copy)

    async def sampling_client(self, path: str | None = None) -> TinkerFuture[TinkerSamplingClient]:
        """Over sampler (or state) weights at ``path``, or over a snapshot of the current
        weights taken in submission order (``save_weights_and_get_sampling_client``)."""

        def wrap(sampler: Any) -> TinkerSamplingClient:
            return TinkerSamplingClient(sampler, self)

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
                self._chain(self.service.create_sampling_client(model_path=path).future(), created)
            except BaseException as error:
                _settle(created, None, error)

        _in_background(create)
        return TinkerFuture(self._bridge("sampling_client", created, wrap))

    async def delete_checkpoint(self, path: str) -> TinkerFuture[None]:
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
                _settle(deleted, None, error)
                return

            def finished(done: concurrent.futures.Future[Any]) -> None:
                error = done.exception()
                missing = isinstance(error, tinker.NotFoundError)
                _settle(deleted, None, None if missing else error)

            source.add_done_callback(finished)

        _in_background(delete)
        return TinkerFuture(self._bridge("delete_checkpoint", deleted))

    async def aclose(self) -> None:
        """Wait for submitted work, then finish the Tinker session. Cancelling this stops
        waiting, not the work. A lost client's requests may never finish (a failed chunk leaves
        its turn unused, which wedges every later request): they are abandoned (cancelled in
        the SDK, harmless for a client nobody will use again) instead of waited for."""
        if self._closed:
            return
        self._closed = True
        if self.lost:
            with self._lock:
                abandoned = list(self._pending.values())
            for source in abandoned:
                source.cancel()
        else:
            with self._lock:
                pending = list(self._pending)
            for future in pending:
                with contextlib.suppress(Exception):  # its caller sees the error
                    await TinkerFuture(future)
        status: Literal["success", "errored"] = "errored" if self.lost else "success"
        closing: concurrent.futures.Future[None] = concurrent.futures.Future()

        def close() -> None:
            try:
                self.service.close(status).result(timeout=60)
            except BaseException as error:
                _settle(closing, None, error)
            else:
                _settle(closing, None, None)

        _in_background(close)
        with contextlib.suppress(Exception):  # best effort: the service expires it anyway
            await TinkerFuture(closing)

    async def __aenter__(self) -> TinkerBackend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def _when_all_done(
    futures: Sequence[concurrent.futures.Future[Any]], then: Callable[[], None]
) -> None:
    """Call ``then`` once (on whichever thread finishes last) after every future is done."""
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_future: concurrent.futures.Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            then()

    for future in futures:
        future.add_done_callback(one_done)
