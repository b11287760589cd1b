"""Where the server used to differ from Tinker without a word: saving over a name, time to live
and user metadata of checkpoints, inflight sampling clients."""

from __future__ import annotations

import datetime as dt

import pytest
import tinker
from tinker import types

from crucible.tinker_server import RunningServer
from crucible.tinker_server._paths import TinkerPath

from .tinker_kit import ADAM, API_KEY, BASE_MODEL, TASK, service_client


def _train(training: tinker.TrainingClient, steps: int = 2) -> None:
    for _ in range(steps):
        training.forward_backward(TASK, "cross_entropy")
        training.optim_step(ADAM).result()


def test_save_state_under_a_used_name_is_refused_unless_overwrite(server: RunningServer) -> None:
    client = service_client(server.base_url)
    training = client.create_lora_training_client(BASE_MODEL, rank=4, seed=0).result()
    saved = training.save_state("same").result()
    file = TinkerPath.parse(saved.path).local.file(server.config.root)
    first = file.read_bytes()
    _train(training)
    # Tinker's words (seen as a 409 from its service).
    with pytest.raises(
        tinker.RequestFailedError,
        match=r"Checkpoint 'same' already exists for model .*:train:0 in weights\. Please "
        r"choose a different name to avoid overwriting\.",
    ) as refused:
        training.save_state("same").result()
    assert refused.value.category == types.RequestErrorCategory.User
    assert file.read_bytes() == first
    assert training.save_state("same", overwrite=True).result().path == saved.path
    assert file.read_bytes() != first
    client.close("success").result()


def test_ttl_and_user_metadata_are_kept_and_returned(server: RunningServer) -> None:
    client = service_client(server.base_url)
    training = client.create_lora_training_client(
        BASE_MODEL, rank=4, seed=0, user_metadata={"team": "a"}
    ).result()
    before = dt.datetime.now(dt.UTC)
    state = training.save_state("kept", ttl_seconds=7200, user_metadata={"k": "v"}).result()
    sampler = training.save_weights_for_sampler("s", user_metadata={"x": "y"}).result()
    rest = tinker.RestClient(base_url=server.base_url, api_key=API_KEY)
    listed = {
        c.tinker_path: c for c in rest.list_checkpoints(training.model_id).result().checkpoints
    }
    kept = listed[state.path]
    assert kept.user_metadata == {"k": "v"}
    assert kept.expires_at is not None
    assert 7200 - 5 <= (kept.expires_at - before).total_seconds() <= 7200 + 60
    assert listed[sampler.path].user_metadata == {"x": "y"}
    assert listed[sampler.path].expires_at is None
    assert rest.get_training_run(training.model_id).result().user_metadata == {"team": "a"}
    client.close("success").result()


def test_inflight_samplers_share_one_target_that_later_saves_move(server: RunningServer) -> None:
    client = service_client(server.base_url)
    training = client.create_lora_training_client(BASE_MODEL, rank=4, seed=0).result()
    prompt = TASK[0].model_input
    snapshot = training.save_weights_and_get_sampling_client(kind="snapshot").result()
    first = training.save_weights_and_get_sampling_client(kind="inflight").result()
    before = first.compute_logprobs(prompt).result()
    assert snapshot.compute_logprobs(prompt).result() == before
    _train(training, steps=3)
    second = training.save_weights_and_get_sampling_client(kind="inflight").result()
    after = second.compute_logprobs(prompt).result()
    assert after != before
    # The first inflight client moved with the second save; the snapshot stayed.
    assert first.compute_logprobs(prompt).result() == after
    assert snapshot.compute_logprobs(prompt).result() == before
    client.close("success").result()
