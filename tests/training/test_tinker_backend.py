"""The tinker backend: the real, unmodified Tinker SDK against the local server on loopback.

The server splits forward_backward into chunks of two datums, so every multi-datum call also
exercises out-of-order chunk arrival (the SDK sends the first chunk last).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
import tinker
from tinker import types

from crucible.tinker_server import RunningServer, ServerConfig, running_server
from crucible.training import (
    BackendCrashed,
    BackendOpFailed,
    CheckpointNotFound,
    InvalidCheckpointPath,
    InvalidDatum,
    TinkerAuthError,
    TinkerBackend,
    TinkerBackendConfig,
    TrainingBackend,
    UnknownBaseModel,
    UnsupportedLossFn,
)
from crucible.training.backends.local import (
    ByteTokenizer,
    LocalBackend,
    LocalBackendConfig,
    LoraConfig,
)
from crucible.training.backends.tinker._errors import crucible_error

pytestmark = pytest.mark.anyio
os.environ.setdefault("TINKER_TELEMETRY", "0")  # no background telemetry posts in tests

API_KEY = "tml-crucible-test"
BASE_MODEL = "crucible/tiny-2l-128"
RANK = 4
TOKENIZER = ByteTokenizer()
ADAM = types.AdamParams(learning_rate=1e-2)
CHUNKED = {"fwdbwd_max_chunk_len": 2}


def _datum(text: str, prompt_chars: int) -> types.Datum:
    ids = [TOKENIZER.bos_token_id, *TOKENIZER.encode(text), TOKENIZER.eos_token_id]
    weights = [0.0 if i < prompt_chars else 1.0 for i in range(len(ids) - 1)]
    return types.Datum(
        model_input=types.ModelInput.from_ints(ids[:-1]),
        loss_fn_inputs={"target_tokens": ids[1:], "weights": weights},
    )


BATCHES = [[_datum(f"{a} + {b} = {a + b}", 5) for a in range(10 + b, 15 + b)] for b in range(4)]
PROBE = [_datum("12 + 30 = 42", 5)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    config = ServerConfig(
        port=0,
        root=tmp_path_factory.mktemp("tinker"),
        api_keys={API_KEY},
        long_poll_s=5.0,
        client_config=CHUNKED,
    )
    with running_server(config) as running:
        yield running


def tinker_config(server: RunningServer, **overrides: Any) -> TinkerBackendConfig:
    settings: dict[str, Any] = {
        "base_model": BASE_MODEL,
        "lora_rank": RANK,
        "seed": 0,
        "base_url": server.base_url,
        "api_key": API_KEY,
    }
    settings.update(overrides)
    return TinkerBackendConfig(**settings)


def local_backend(root: Path) -> LocalBackend:
    """What the server builds for rank 4 (alpha = 2 * rank) and seed 0."""
    return LocalBackend(
        LocalBackendConfig(
            base_model=BASE_MODEL,
            lora=LoraConfig(rank=RANK, alpha=2.0 * RANK),
            seed=0,
            checkpoint_root=root,
            run_id="ref",
        )
    )


async def train(backend: TrainingBackend, batches: list[list[types.Datum]]) -> list[float]:
    """The pipelined loop of a supervised recipe: the optimizer step is submitted before the
    forward_backward result is awaited. Returns the loss of each step."""
    losses = []
    for batch in batches:
        fwd_bwd = await backend.forward_backward(batch)
        optim = await backend.optim_step(ADAM)
        losses.append((await fwd_bwd).metrics["loss:sum"])
        await optim
    return losses


async def probe(backend: TrainingBackend) -> np.ndarray:
    output = await (await backend.forward(PROBE))
    return np.asarray(output.loss_fn_outputs[0]["logprobs"].to_numpy())


async def test_a_supervised_loop_matches_the_local_backend(
    server: RunningServer, tmp_path: Path
) -> None:
    async with TinkerBackend(tinker_config(server)) as remote:
        remote_losses = await train(remote, BATCHES)
        remote_probe = await probe(remote)
        assert remote.info().model_id.endswith(":train:0")
    async with local_backend(tmp_path) as local:
        local_losses = await train(local, BATCHES)
        local_probe = await probe(local)
    # Chunked gradient accumulation reorders float sums: equal up to rounding.
    np.testing.assert_allclose(remote_losses, local_losses, rtol=1e-4)
    np.testing.assert_allclose(remote_probe, local_probe, rtol=1e-4, atol=1e-5)
    assert remote_losses[-1] < remote_losses[0]


async def test_save_then_resume_in_a_new_client_continues_the_same_run(
    server: RunningServer,
) -> None:
    async with TinkerBackend(tinker_config(server)) as first:
        await train(first, BATCHES[:2])
        saved = await (await first.save_state("halfway"))
        await train(first, BATCHES[2:])
        straight = await probe(first)
    assert saved.path.startswith("tinker://") and saved.path.endswith("/weights/halfway")
    resumed = await TinkerBackend.from_state(tinker_config(server), saved.path)
    async with resumed:
        await train(resumed, BATCHES[2:])
        np.testing.assert_array_equal(await probe(resumed), straight)


async def test_load_state_mid_run_rewinds_and_a_refused_load_changes_nothing(
    server: RunningServer,
) -> None:
    async with TinkerBackend(tinker_config(server)) as backend:
        await train(backend, BATCHES[:1])
        saved = await (await backend.save_state("rewind"))
        at_save = await probe(backend)
        await train(backend, BATCHES[1:2])
        loaded = await (await backend.load_state(saved.path))
        assert loaded.path == saved.path
        np.testing.assert_array_equal(await probe(backend), at_save)
        with pytest.raises(Exception, match="CheckpointNotFound"):
            await (await backend.load_state("tinker://nobody:train:0/weights/missing"))
        np.testing.assert_array_equal(await probe(backend), at_save)
        assert not backend.lost


async def test_sampling_from_saved_weights_and_from_a_snapshot(server: RunningServer) -> None:
    async with TinkerBackend(tinker_config(server)) as backend:
        await train(backend, BATCHES[:2])
        prompt = types.ModelInput.from_ints(PROBE[0].model_input.to_ints()[:6])
        saved = await (await backend.save_weights_for_sampler("for-sampling"))
        sampler = await (await backend.sampling_client(saved.path))
        params = types.SamplingParams(max_tokens=6, temperature=1.0, seed=11, stop=[])
        first = await (await sampler.sample(prompt, 2, params))
        again = await (await sampler.sample(prompt, 2, params))
        assert [s.tokens for s in first.sequences] == [s.tokens for s in again.sequences]
        assert all(len(s.tokens) == 6 and s.stop_reason == "length" for s in first.sequences)
        # A snapshot of the current weights scores the probe as forward does.
        snapshot = await (await backend.sampling_client())
        logprobs = await (await snapshot.compute_logprobs(PROBE[0].model_input))
        forward = await probe(backend)
        assert logprobs[0] is None
        np.testing.assert_allclose(logprobs[1:], forward[:-1], rtol=1e-4, atol=1e-5)


async def test_a_refused_request_raises_a_typed_error_and_the_client_carries_on(
    server: RunningServer,
) -> None:
    bad = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={"target_tokens": [TOKENIZER.vocab_size + 1, 2]},
    )
    async with TinkerBackend(tinker_config(server)) as backend:
        with pytest.raises(InvalidDatum, match="token ids outside"):
            await (await backend.forward_backward([bad]))
        with pytest.raises(InvalidDatum):
            await backend.forward_backward([])  # the SDK refuses before sending
        assert not backend.lost
        assert len(await train(backend, BATCHES[:1])) == 1


async def test_a_bad_api_key_is_an_auth_error(server: RunningServer) -> None:
    async with TinkerBackend(tinker_config(server, api_key="tml-not-this-one")) as backend:
        with pytest.raises(TinkerAuthError, match="401"):
            await backend.forward_backward(BATCHES[0])


async def test_an_unknown_base_model_fails_the_first_operation(server: RunningServer) -> None:
    async with TinkerBackend(tinker_config(server, base_model="Qwen/Qwen3-8B")) as backend:
        assert backend.info().model_name == "Qwen/Qwen3-8B"  # from the config until connected
        with pytest.raises(UnknownBaseModel, match="crucible/tiny-2l-128"):
            await backend.forward_backward(BATCHES[0])


async def test_a_cancelled_caller_never_deadlocks_the_client(server: RunningServer) -> None:
    async with TinkerBackend(tinker_config(server)) as backend:
        # Cancelled while the first call is still connecting (waiting for admission).
        with anyio.CancelScope() as scope:
            scope.cancel()
            await backend.forward_backward(BATCHES[0])
        fwd_bwd = await backend.forward_backward(BATCHES[0])
        optim = await backend.optim_step(ADAM)
        # Cancelled while waiting for queued results: the work still runs.
        with anyio.CancelScope() as scope:
            scope.cancel()
            await fwd_bwd
        with anyio.move_on_after(0.001):
            await optim
        after = await backend.forward_backward(BATCHES[1])
        assert (await after).metrics["loss:sum"] > 0
        assert (await optim).metrics is not None  # a later await still gets the result
        assert (await fwd_bwd).metrics["loss:sum"] > 0


async def test_a_lost_session_raises_typed_errors_and_a_rebuilt_client_replays(
    server: RunningServer, tmp_path: Path
) -> None:
    """The server forgets the client's session (as after an expiry): the failed step raises
    BackendOpFailed and the client is lost (BackendCrashed from then on). A new backend built
    from the last state checkpoint, replaying the steps since, ends where a clean run ends."""
    async with TinkerBackend(tinker_config(server)) as backend:
        await train(backend, BATCHES[:2])
        saved = await (await backend.save_state("before-loss"))
        session_id = backend.info().model_id.split(":")[0]
        async with httpx.AsyncClient() as http:
            finished = await http.post(
                f"{server.base_url}/api/v1/sessions/{session_id}/finish",
                json={"reason": {"type": "errored"}},
                headers={"X-API-Key": API_KEY},
            )
        assert finished.status_code == 200
        with pytest.raises(BackendOpFailed, match="410"):
            await (await backend.forward_backward(BATCHES[2]))
        assert backend.lost
        with pytest.raises(BackendCrashed, match="build a new backend"):
            await backend.optim_step(ADAM)
    async with await TinkerBackend.from_state(tinker_config(server), saved.path) as rebuilt:
        await train(rebuilt, BATCHES[2:])
        recovered = await probe(rebuilt)
    async with TinkerBackend(tinker_config(server)) as clean:
        await train(clean, BATCHES)
        np.testing.assert_array_equal(recovered, await probe(clean))


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    config = ServerConfig(
        port=0,
        root=tmp_path_factory.mktemp("faulty"),
        api_keys={API_KEY},
        long_poll_s=5.0,
        client_config=CHUNKED,
        fault_rate=0.2,
        fault_seed=5,
        fault_kinds=("500", "503", "429", "drop"),
    )
    with running_server(config) as running:
        yield running


async def test_server_faults_change_nothing_but_time(
    server: RunningServer, faulty_server: RunningServer
) -> None:
    """5xx, 429 and dropped connections, before or after the server applied the request: the
    SDK retries and the server recognises resubmits, so the weights equal a clean run's."""
    async with TinkerBackend(tinker_config(faulty_server)) as unreliable:
        unreliable_losses = await train(unreliable, BATCHES[:3])
        unreliable_probe = await probe(unreliable)
    async with TinkerBackend(tinker_config(server)) as reliable:
        reliable_losses = await train(reliable, BATCHES[:3])
        reliable_probe = await probe(reliable)
    assert len(faulty_server.faults) >= 3
    assert {fault.when for fault in faulty_server.faults} == {"before", "after"}
    assert unreliable_losses == reliable_losses
    np.testing.assert_array_equal(unreliable_probe, reliable_probe)


class TinkerBackends:
    """A factory for the supervised session: a new TinkerBackend (a new Tinker session) per
    incarnation."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.built: list[TinkerBackend] = []

    def __call__(self, incarnation: int) -> TrainingBackend:
        backend = TinkerBackend(tinker_config(self.server))
        self.built.append(backend)
        return backend


async def _finish_tinker_session(server: RunningServer, backend: TinkerBackend) -> None:
    """What a service-side expiry does: the client's models become unknown (410)."""
    session_id = backend.info().model_id.split(":")[0]
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.base_url}/api/v1/sessions/{session_id}/finish",
            json={"reason": {"type": "errored"}},
            headers={"X-API-Key": API_KEY},
        )
    assert response.status_code == 200


async def _supervised_run(
    server: RunningServer, log_dir: Path, *, lose_client_after: int | None
) -> tuple[list[float], int, np.ndarray]:
    from crucible.actors import Backoff, open_runtime
    from crucible.training import open_training

    backends = TinkerBackends(server)
    losses = []
    async with (
        open_runtime() as rt,
        open_training(rt, backends, log_dir, backoff=Backoff.none()) as training,
    ):
        session = training.session
        assert session.info().model_id  # the session connected before answering anything
        for step, batch in enumerate(BATCHES, start=1):
            fwd_bwd, optim = await session.train_step(batch, ADAM)
            losses.append((await fwd_bwd).metrics["loss:sum"])
            await optim
            if step == 2:
                await training.checkpoints.save(step)
            if step == lose_client_after:
                await _finish_tinker_session(server, backends.built[-1])
        final = np.asarray(
            (await (await session.forward(PROBE))).loss_fn_outputs[0]["logprobs"].to_numpy()
        )
        return losses, training.restarts, final


async def test_the_supervised_session_rebuilds_a_lost_tinker_client_and_replays(
    server: RunningServer, tmp_path: Path
) -> None:
    """The Tinker client is lost after step 3; the session's next incarnation builds a new
    client from the step-2 checkpoint (create_training_client_from_state_with_optimizer),
    replays step 3 and carries on: the run ends with the weights of a run without the loss."""
    clean_losses, clean_restarts, clean = await _supervised_run(
        server, tmp_path / "clean", lose_client_after=None
    )
    losses, restarts, recovered = await _supervised_run(
        server, tmp_path / "lost", lose_client_after=3
    )
    assert clean_restarts == 0 and restarts == 1
    assert losses == clean_losses
    np.testing.assert_array_equal(recovered, clean)


def _status(cls: type[tinker.APIStatusError], status: int, detail: str = "no") -> BaseException:
    request = httpx.Request("POST", "http://127.0.0.1/api/v1/op")
    response = httpx.Response(status, request=request, json={"detail": detail})
    return cls(f"Error code: {status} - {detail}", response=response, body={"detail": detail})


def _failed(category: types.RequestErrorCategory, message: str = "boom") -> BaseException:
    return tinker.RequestFailedError(message, request_id="r", category=category)


USER = types.RequestErrorCategory.User
SERVER = types.RequestErrorCategory.Server
CONNECTION = tinker.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1/"))


@pytest.mark.parametrize(
    ("op", "error", "expected"),
    [
        ("forward_backward", _failed(USER), InvalidDatum),
        ("forward_backward", _failed(USER, "UnsupportedLossFn: ppo"), UnsupportedLossFn),
        ("load_state", _failed(USER, "CheckpointNotFound: no run"), CheckpointNotFound),
        ("load_state", _status(tinker.NotFoundError, 404), CheckpointNotFound),
        ("load_state", _status(tinker.BadRequestError, 400), InvalidCheckpointPath),
        ("create", _status(tinker.BadRequestError, 400), UnknownBaseModel),
        ("optim_step", _status(tinker.NotFoundError, 404), BackendOpFailed),  # model unknown
        ("optim_step", _failed(SERVER), BackendOpFailed),
        ("forward_backward", CONNECTION, BackendOpFailed),
        ("forward_backward", _status(tinker.InternalServerError, 503), BackendOpFailed),
        ("forward_backward", ValueError("No data provided"), InvalidDatum),
        ("create", _status(tinker.AuthenticationError, 401), TinkerAuthError),
        ("optim_step", RuntimeError("this TrainingClient is poisoned"), BackendCrashed),
    ],
)
def test_sdk_errors_map_to_crucible_errors(op: str, error: BaseException, expected: type) -> None:
    mapped = crucible_error(op, error)
    assert type(mapped) is expected
    assert op in str(mapped) and type(error).__name__ in str(mapped)


async def test_a_cancelled_sdk_future_wedges_the_client_and_fails_what_waits() -> None:
    """Crucible never cancels an SDK future; if something else does, the TrainingClient is
    wedged (that seq_id is never sent): every pending and later operation gets BackendCrashed
    instead of waiting forever."""
    import concurrent.futures

    backend = TinkerBackend(TinkerBackendConfig(base_model=BASE_MODEL, api_key=API_KEY))
    queued: concurrent.futures.Future[Any] = concurrent.futures.Future()
    behind: concurrent.futures.Future[Any] = concurrent.futures.Future()
    waiting = backend._sdk.bridge("optim_step", behind)
    backend._sdk.bridge("forward_backward", queued)
    queued.cancel()
    assert backend.lost
    with pytest.raises(BackendCrashed, match="cancelled"):
        waiting.result(timeout=5)
    with pytest.raises(BackendCrashed, match="build a new backend"):
        await backend.forward_backward(BATCHES[0])
    await backend.aclose()


def test_the_session_never_retries_what_the_sdk_already_retried() -> None:
    """The SDK retries connection errors and 408/409/429/5xx itself, re-sending the same
    sequence id; a new request from us would get a new one and could apply twice."""
    from crucible.training.port import applies_once, retries_itself
    from crucible.training.session import SessionRetry

    assert retries_itself(TinkerBackend) and not applies_once(TinkerBackend)
    policy = SessionRetry()
    assert not any(policy.may_retry(TinkerBackend, op) for op in ("optim_step", "sample"))


def test_a_shipped_models_tokenizer_is_read_from_its_directory_before_connecting() -> None:
    # the recipe renders data before the session exists: a shipped model's tokenizer must be
    # the one its weights were trained with, not a generic stand-in
    from transformers import AutoTokenizer

    from crucible.training.backends.local import BASE_MODELS

    spec = BASE_MODELS["crucible/tiny-chat"]
    backend = TinkerBackend(TinkerBackendConfig(base_model=spec.name, api_key=API_KEY))
    reference = AutoTokenizer.from_pretrained(spec.directory)
    text = "<|bos|><|user|>What is 12 + 30?<|end|><|assistant|>42<|end|>"
    assert backend.tokenizer.encode(text) == reference.encode(text, add_special_tokens=False)
    assert backend.tokenizer.vocab_size == len(reference)
