"""No run id or checkpoint path a client sends can reach outside the server's root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tinker

from crucible.tinker_server import RunningServer, ServerConfig, running_server

from .tinker_kit import API_KEY, BASE_MODEL, service_client

HEADERS = {"X-API-Key": API_KEY}
# Percent-encoded, so the client sends them as they are and the server decodes them.
ESCAPES = ["%2E%2E", "%2E", "..%2F..", "..%5C..", "a:train:0", "%2Fetc"]


@pytest.fixture(scope="module")
def inner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    """A server whose root sits beside a folder that looks like a run with a checkpoint."""
    outer = tmp_path_factory.mktemp("outer")
    secret = outer / "secret" / "state.pt"
    secret.parent.mkdir()
    secret.write_bytes(b"not yours")
    config = ServerConfig(port=0, root=outer / "root", api_keys={API_KEY}, long_poll_s=5.0)
    with running_server(config) as running:
        yield running, secret


@pytest.mark.parametrize("run_id", ESCAPES)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/training_runs/{run}/checkpoints", None),
        ("GET", "/training_runs/{run}", None),
        ("DELETE", "/training_runs/{run}/checkpoints/weights/secret", None),
        ("POST", "/training_runs/{run}/checkpoints/weights/secret/publish", None),
        ("PUT", "/training_runs/{run}/checkpoints/weights/secret/ttl", {"ttl_seconds": None}),
    ],
)
def test_run_ids_that_could_escape_the_root_are_refused(
    inner: tuple[RunningServer, Path], run_id: str, method: str, path: str, body: object
) -> None:
    server, secret = inner
    url = f"{server.base_url}/api/v1{path.format(run=run_id)}"
    answer = httpx.request(method, url, headers=HEADERS, json=body)
    assert answer.status_code == 404, answer.text
    assert "no training run" in answer.json()["detail"] or "no endpoint" in answer.json()["detail"]
    assert secret.read_bytes() == b"not yours"


@pytest.mark.parametrize(
    "tinker_path",
    ["tinker://../weights/secret", "tinker://./weights/secret", "tinker://a/weights/../../x"],
)
def test_checkpoint_paths_that_could_escape_the_root_are_refused(
    inner: tuple[RunningServer, Path], tinker_path: str
) -> None:
    server, secret = inner
    rest = tinker.RestClient(base_url=server.base_url, api_key=API_KEY)
    with pytest.raises((tinker.BadRequestError, tinker.NotFoundError, ValueError)):
        rest.get_weights_info_by_tinker_path(tinker_path).result()
    with pytest.raises((tinker.BadRequestError, tinker.NotFoundError, ValueError)):
        rest.delete_checkpoint_from_tinker_path(tinker_path).result()
    client = service_client(server.base_url)
    with pytest.raises((tinker.BadRequestError, tinker.RequestFailedError)):
        client.create_training_client_from_state(tinker_path).result()
    sampler_path = tinker_path.replace("weights", "sampler_weights")
    with pytest.raises((tinker.BadRequestError, tinker.NotFoundError)):
        client.create_sampling_client(model_path=sampler_path).result()
    client.close("success").result()
    assert secret.read_bytes() == b"not yours"


def test_a_run_id_of_dot_dot_lists_nothing(inner: tuple[RunningServer, Path]) -> None:
    server, _secret = inner
    client = service_client(server.base_url)
    client.create_lora_training_client(BASE_MODEL, rank=4).result()
    answer = httpx.get(
        f"{server.base_url}/api/v1/training_runs/%2E%2E/checkpoints", headers=HEADERS
    )
    assert answer.status_code == 404
    assert "no training run '..'" in answer.json()["detail"]
    client.close("success").result()
