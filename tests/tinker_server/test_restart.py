"""A server killed and started again on the same root: sessions, runs and checkpoints are still
there, a client rebuilds its training client from the run's last state, and what the old
process held (pending futures, live models) fails with a clear error. Sessions whose heartbeats
stop expire and free their models."""

from __future__ import annotations

import threading
from pathlib import Path

import attrs
import pytest
import tinker

from crucible.tinker_server import ServerConfig, running_server

from .test_protocol import Raw
from .tinker_kit import ADAM, API_KEY, BASE_MODEL, TASK, service_client


def test_after_a_restart_a_client_resumes_from_the_run_s_last_state(tmp_path: Path) -> None:
    config = ServerConfig(port=0, root=tmp_path, api_keys={API_KEY}, long_poll_s=5.0)
    with running_server(config) as first:
        port = int(first.base_url.rsplit(":", 1)[1])
        client = service_client(first.base_url)
        training = client.create_lora_training_client(BASE_MODEL, rank=4, seed=0).result()
        training.forward_backward(TASK, "cross_entropy")
        training.optim_step(ADAM).result()
        saved = training.save_state("last").result()
        expected = training.forward(TASK, "cross_entropy").result().metrics["loss:sum"]
        raw = Raw(first.base_url)
        waiting = raw.forward_backward(raw.new_model(), 2, TASK[:1])  # seq 1 never comes
        session_id = training.model_id.split(":")[0]

    with running_server(attrs.evolve(config, port=port)):
        # A future the old process accepted: a failed request that says what happened.
        lost = raw.result(waiting)
        assert lost.status_code == 200
        assert lost.json()["error"].startswith("ServerRestarted: request ")
        # The old training client: 410 with the way back, not 404.
        with pytest.raises(tinker.APIStatusError, match="lost when the server restarted") as gone:
            training.forward(TASK, "cross_entropy").result()
        assert gone.value.status_code == 410
        rest = tinker.RestClient(base_url=first.base_url, api_key=API_KEY)
        run = rest.get_training_run(training.model_id).result()
        assert run.last_checkpoint is not None and run.last_checkpoint.tinker_path == saved.path
        assert rest.get_session(session_id).result().training_run_ids[0] == training.model_id
        # The same ServiceClient (its session was kept) rebuilds the training client.
        resumed = client.create_training_client_from_state_with_optimizer(
            run.last_checkpoint.tinker_path
        ).result()
        again = resumed.forward(TASK, "cross_entropy").result().metrics["loss:sum"]
        assert again == pytest.approx(expected, rel=1e-6)
        resumed.forward_backward(TASK, "cross_entropy")
        resumed.optim_step(ADAM).result()
        client.close("success").result()


def test_a_session_without_heartbeats_expires_and_frees_its_models(tmp_path: Path) -> None:
    expired = threading.Event()
    expired_ids: list[str] = []

    def on_expired(session_id: str) -> None:
        expired_ids.append(session_id)
        expired.set()

    config = ServerConfig(
        port=0,
        root=tmp_path,
        api_keys={API_KEY},
        long_poll_s=5.0,
        session_timeout_s=1.0,
        on_session_expired=on_expired,
    )
    with running_server(config) as server:
        raw = Raw(server.base_url)
        silent = raw.new_model()
        alive = raw.new_model()
        alive_session = alive.split(":")[0]
        while not expired.is_set():  # the live session heartbeats until the other expired
            beat = raw.post("/session_heartbeat", {"session_id": alive_session, "type": "x"})
            assert beat.status_code == 200
        assert expired_ids == [silent.split(":")[0]]
        refused = raw.post("/optim_step", {"model_id": silent, "seq_id": 1, "adam_params": {}})
        assert refused.status_code == 410
        assert "no heartbeat for 1 s" in refused.json()["detail"]
        assert raw.post("/session_heartbeat", {"session_id": expired_ids[0]}).status_code == 410
        # The live session's model still trains.
        assert raw.result(raw.forward_backward(alive, 1, TASK[:1])).status_code == 200
