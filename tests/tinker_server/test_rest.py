"""RestClient's training runs, checkpoints and sessions, answered from the files under the root."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec
import pytest
import tinker
from tinker import types

from crucible.tinker_server import RunningServer, ServerConfig, running_server
from crucible.tinker_server._paths import TinkerPath
from crucible.tinker_server._records import CheckpointMeta

from .tinker_kit import API_KEY, BASE_MODEL


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of this module alone, so listings hold only what these tests made."""
    config = ServerConfig(
        port=0, root=tmp_path_factory.mktemp("rest"), api_keys={API_KEY}, long_poll_s=5.0
    )
    with running_server(config) as running:
        yield running


@pytest.fixture(scope="module")
def made(fresh: RunningServer) -> dict[str, str]:
    """Two runs of one session: the first with a state and a sampler checkpoint."""
    client = tinker.ServiceClient(
        base_url=fresh.base_url, api_key=API_KEY, user_metadata={"purpose": "rest-test"}
    )
    first = client.create_lora_training_client(BASE_MODEL, rank=4, seed=0).result()
    state = first.save_state("state-1").result()
    sampler = first.save_weights_for_sampler("sampler-1").result()
    second = client.create_lora_training_client(BASE_MODEL, rank=8, seed=0).result()
    client.create_sampling_client(model_path=sampler.path).result()
    return {
        "first": first.model_id,
        "second": second.model_id,
        "state": state.path,
        "sampler": sampler.path,
        "session": first.model_id.split(":")[0],
        "sampler_id": f"{first.model_id.split(':')[0]}:sample:0",
    }


@pytest.fixture
def rest(fresh: RunningServer) -> tinker.RestClient:
    return tinker.RestClient(base_url=fresh.base_url, api_key=API_KEY)


def test_training_runs_are_listed_newest_first_with_a_cursor(
    rest: tinker.RestClient, made: dict[str, str]
) -> None:
    page = rest.list_training_runs(limit=1).result()
    assert [run.training_run_id for run in page.training_runs] == [made["second"]]
    assert (page.cursor.total_count, page.cursor.limit, page.cursor.offset) == (2, 1, 0)
    rest_page = rest.list_training_runs(limit=5, offset=1).result()
    assert [run.training_run_id for run in rest_page.training_runs] == [made["first"]]


def test_a_training_run_names_its_last_checkpoints(
    rest: tinker.RestClient, made: dict[str, str]
) -> None:
    run = rest.get_training_run(made["first"]).result()
    assert (run.base_model, run.is_lora, run.lora_rank) == (BASE_MODEL, True, 4)
    assert run.last_checkpoint is not None and run.last_checkpoint.tinker_path == made["state"]
    assert run.last_sampler_checkpoint is not None
    assert run.last_sampler_checkpoint.tinker_path == made["sampler"]
    by_path = rest.get_training_run_by_tinker_path(made["sampler"]).result()
    assert by_path.training_run_id == made["first"]
    with pytest.raises(tinker.NotFoundError, match="no training run"):
        rest.get_training_run("0123456789abcdef:train:9").result()


def test_weights_info_describes_the_checkpoint(
    rest: tinker.RestClient, made: dict[str, str]
) -> None:
    info = rest.get_weights_info_by_tinker_path(made["state"]).result()
    assert (info.base_model, info.is_lora, info.lora_rank) == (BASE_MODEL, True, 4)
    assert (info.train_attn, info.train_mlp, info.train_unembed) == (True, True, True)
    missing = made["state"].replace("state-1", "nothing")
    with pytest.raises(tinker.NotFoundError, match="no checkpoint"):
        rest.get_weights_info_by_tinker_path(missing).result()


def test_user_checkpoints_span_every_run(rest: tinker.RestClient, made: dict[str, str]) -> None:
    listed = rest.list_user_checkpoints(limit=10).result()
    assert {c.tinker_path for c in listed.checkpoints} == {made["state"], made["sampler"]}
    assert listed.cursor is not None and listed.cursor.total_count == 2
    assert len(rest.list_user_checkpoints(limit=1, offset=1).result().checkpoints) == 1


def _checkpoint(rest: tinker.RestClient, path: str) -> types.Checkpoint:
    run_id = TinkerPath.parse(path).run_id
    return next(
        c for c in rest.list_checkpoints(run_id).result().checkpoints if c.tinker_path == path
    )


def test_publish_unpublish_and_ttl_are_recorded(
    rest: tinker.RestClient, made: dict[str, str]
) -> None:
    path = made["state"]
    rest.publish_checkpoint_from_tinker_path(path).result()
    assert _checkpoint(rest, path).public
    rest.unpublish_checkpoint_from_tinker_path(path).result()
    assert not _checkpoint(rest, path).public
    rest.set_checkpoint_ttl_from_tinker_path(path, 7200).result()
    expires = _checkpoint(rest, path).expires_at
    assert expires is not None and 7100 < expires.timestamp() - time.time() <= 7200
    rest.set_checkpoint_ttl_from_tinker_path(path, None).result()
    assert _checkpoint(rest, path).expires_at is None
    with pytest.raises(tinker.BadRequestError, match="between 3600"):
        rest.set_checkpoint_ttl_from_tinker_path(path, 10).result()


def test_an_expired_checkpoint_is_deleted_not_listed(
    fresh: RunningServer, rest: tinker.RestClient, made: dict[str, str]
) -> None:
    client = tinker.ServiceClient(base_url=fresh.base_url, api_key=API_KEY)
    training = client.create_lora_training_client(BASE_MODEL, rank=4, seed=0).result()
    saved = training.save_state("short-lived", ttl_seconds=3600).result()
    path = TinkerPath.parse(saved.path)
    # An hour is long for a test: move its expiry into the past, as the clock would.
    meta_file = fresh.config.root / path.local.run_id / ".meta.json"
    entries = msgspec.json.decode(meta_file.read_bytes(), type=dict[str, CheckpointMeta])
    entries[path.checkpoint_id] = msgspec.structs.replace(
        entries[path.checkpoint_id], expires_at=time.time() - 1
    )
    meta_file.write_bytes(msgspec.json.encode(entries))
    assert rest.list_checkpoints(training.model_id).result().checkpoints == []
    assert not path.local.file(fresh.config.root).exists()
    client.close("success").result()


def test_sessions_are_listed_and_described(rest: tinker.RestClient, made: dict[str, str]) -> None:
    assert made["session"] in rest.list_sessions(limit=50).result().sessions
    session = rest.get_session(made["session"]).result()
    assert session.training_run_ids == [made["first"], made["second"]]
    assert session.sampler_ids == [made["sampler_id"]]
    assert session.user_metadata == {"purpose": "rest-test"}
    with pytest.raises(tinker.NotFoundError, match="no session"):
        rest.get_session("0123456789abcdef").result()
    found = rest.search_sessions(
        types.SessionSearchRequest(user_metadata={"purpose": "rest-test"})
    ).result()
    assert [s.session_id for s in found.sessions] == [made["session"]]
    assert found.sessions[0].status == types.SessionActive()


def test_what_cannot_apply_locally_says_why(rest: tinker.RestClient, made: dict[str, str]) -> None:
    with pytest.raises(RuntimeError, match="records no request timeline"):
        rest.export_session_trace(made["session"]).result()
    with pytest.raises(RuntimeError, match="whoami requires JWT auth"):
        rest.whoami().result()
    with pytest.raises(tinker.BadRequestError, match="no projects"):
        rest.copy_weights(made["state"], destination_project_id="p").result()
    with pytest.raises(tinker.BadRequestError, match="no external-weights bucket"):
        rest.get_external_weights_urls(
            made["state"].replace("/weights/", "/external_weights/")
        ).result()
