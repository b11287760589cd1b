"""The wire protocol as the SDK relies on it: long-poll, error bodies and status codes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tinker
from tinker import types
from tinker.proto.request_conv import forward_backward_request_to_proto

from crucible.tinker_server import RunningServer, ServerConfig, running_server

from .tinker_kit import ADAM, API_KEY, BASE_MODEL, TASK, TOKENIZER, make_datum, service_client

HEADERS = {"X-API-Key": API_KEY}


class Raw:
    """Plain HTTP against the server, as the SDK would send it."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=f"{base_url}/api/v1", headers=HEADERS, timeout=30)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(path, json=body)

    def result(self, request_id: str) -> httpx.Response:
        return self.post("/retrieve_future", {"request_id": request_id})

    def new_model(self) -> str:
        session = self.post(
            "/create_session", {"tags": [], "user_metadata": {}, "sdk_version": "test"}
        ).json()["session_id"]
        created = self.post(
            "/create_model",
            {
                "session_id": session,
                "model_seq_id": 0,
                "base_model": BASE_MODEL,
                "lora_config": {"rank": 4, "seed": 0},
            },
        ).json()
        model_id: str = self.result(created["request_id"]).json()["model_id"]
        return model_id

    def forward_backward(self, model_id: str, seq_id: int, data: list[types.Datum]) -> str:
        request = types.ForwardBackwardRequest(
            forward_backward_input=types.ForwardBackwardInput(data=data, loss_fn="cross_entropy"),
            model_id=model_id,
            seq_id=seq_id,
        )
        body = forward_backward_request_to_proto(request).SerializeToString()
        response = self.http.post(
            "/forward_backward", content=body, headers={"Content-Type": "application/x-protobuf"}
        )
        assert response.status_code == 200, response.text
        request_id: str = response.json()["request_id"]
        return request_id


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose long-poll gives up after 0.2 s, to see try_again."""
    config = ServerConfig(
        port=0, root=tmp_path_factory.mktemp("quick"), api_keys={API_KEY}, long_poll_s=0.2
    )
    with running_server(config) as running:
        yield running


def test_an_unfinished_result_is_held_then_answered_try_again(quick_server: RunningServer) -> None:
    raw = Raw(quick_server.base_url)
    model_id = raw.new_model()
    waiting = raw.forward_backward(model_id, 2, TASK[:1])  # seq 1 has not arrived: it waits
    answer = raw.result(waiting)
    assert answer.status_code == 200
    assert answer.json() == {"type": "try_again", "request_id": waiting, "queue_state": "active"}
    raw.forward_backward(model_id, 1, TASK[:1])
    # Now both ran, in order: the waiting one answers with a protobuf ForwardBackwardOutput.
    done = raw.result(waiting)
    assert done.headers["content-type"] == "application/x-protobuf"


def test_a_long_poll_returns_as_soon_as_the_result_lands(server: RunningServer) -> None:
    raw = Raw(server.base_url)
    model_id = raw.new_model()
    waiting = raw.forward_backward(model_id, 2, TASK[:1])
    polled: list[httpx.Response] = []
    poller = threading.Thread(target=lambda: polled.append(Raw(server.base_url).result(waiting)))
    poller.start()
    raw.forward_backward(model_id, 1, TASK[:1])  # unblocks seq 2 while the poll is held
    poller.join()
    assert polled[0].headers["content-type"] == "application/x-protobuf"


def test_an_unknown_request_id_is_a_lost_promise(server: RunningServer) -> None:
    answer = Raw(server.base_url).result("req-does-not-exist")
    assert answer.status_code == 410
    assert "unknown or expired request id" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        ("/create_session", b"{not json", 400, "not JSON"),
        ("/create_session", b'{"tags": 3}', 422, "invalid CreateSessionRequest"),
        ("/forward_backward", b"\xff\xff\xff", 400, "ForwardBackwardRequest protobuf"),
        ("/get_info", b'{"model_id": "nobody:train:0"}', 404, "no training model"),
    ],
)
def test_malformed_requests_get_error_bodies(
    server: RunningServer, path: str, body: bytes, status: int, detail: str
) -> None:
    raw = Raw(server.base_url)
    answer = raw.http.post(path, content=body)
    assert answer.status_code == status
    assert detail in answer.json()["detail"]


def test_a_wrong_api_key_is_refused_with_401(server: RunningServer) -> None:
    answer = httpx.post(
        f"{server.base_url}/api/v1/client/config", json={}, headers={"X-API-Key": "tml-wrong"}
    )
    assert answer.status_code == 401
    assert "Invalid API key" in answer.json()["detail"]
    with pytest.raises(tinker.AuthenticationError):
        service_client(server.base_url, api_key="tml-wrong").create_lora_training_client(
            BASE_MODEL, rank=4
        ).result()


def test_an_unknown_base_model_is_a_bad_request(server: RunningServer) -> None:
    client = service_client(server.base_url)
    with pytest.raises(tinker.BadRequestError, match="unknown base model 'Qwen/Qwen3-8B'"):
        client.create_lora_training_client("Qwen/Qwen3-8B", rank=4).result()
    client.close("success").result()


def test_bad_tensors_fail_their_request_and_the_client_stays_usable(server: RunningServer) -> None:
    client = service_client(server.base_url)
    training = client.create_lora_training_client(BASE_MODEL, rank=4, seed=0).result()
    vocab = TOKENIZER.vocab_size
    bad = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [vocab + 5, 2, 3]},
    )
    with pytest.raises(tinker.RequestFailedError, match="InvalidDatum") as failure:
        training.forward_backward([bad], "cross_entropy").result()
    assert failure.value.category == types.RequestErrorCategory.User
    # The failed request used its seq_id; the next ones run.
    good = training.forward_backward([make_datum("fine")], "cross_entropy")
    training.optim_step(ADAM).result()
    assert good.result().metrics["loss:sum"] > 0
    client.close("success").result()


def test_checkpoints_are_listed_newest_first_and_deleted(server: RunningServer) -> None:
    client = service_client(server.base_url)
    training = client.create_lora_training_client(BASE_MODEL, rank=4, seed=0).result()
    first = training.save_state("first").result()
    second = training.save_weights_for_sampler("second").result()
    rest = tinker.RestClient(base_url=server.base_url, api_key=API_KEY)
    listed = rest.list_checkpoints(training.model_id).result().checkpoints
    assert [c.tinker_path for c in listed] == [second.path, first.path]
    assert [c.checkpoint_type for c in listed] == ["sampler", "training"]
    rest.delete_checkpoint_from_tinker_path(first.path).result()
    assert [
        c.tinker_path for c in rest.list_checkpoints(training.model_id).result().checkpoints
    ] == [second.path]
    client.close("success").result()


def test_the_cli_parses_its_options(tmp_path: Path) -> None:
    from crucible.tinker_server.__main__ import parse_args

    config = parse_args(
        [
            "--port",
            "0",
            "--root",
            str(tmp_path),
            "--api-key",
            "tml-a",
            "--api-key",
            "tml-b",
            "--fault-rate",
            "0.25",
            "--fault-kinds",
            "503,drop",
            "--session-timeout",
            "30",
        ]
    )
    assert config.session_timeout_s == 30.0
    assert config.api_keys == {"tml-a", "tml-b"}
    assert config.fault_rate == 0.25 and config.fault_kinds == ("503", "drop")
    with pytest.raises(SystemExit):
        parse_args(["--fault-rate", "2"])
    with pytest.raises(SystemExit):
        parse_args(["--session-timeout", "0"])
