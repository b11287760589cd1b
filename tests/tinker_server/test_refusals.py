"""A refused training request fails alone: it uses up its seq_id, and every later request of
the same training client runs. Each kind of refusal, through the real SDK, then a request that
must succeed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import tinker
from tinker import types

from crucible.tinker_server import RunningServer

from .test_protocol import Raw
from .tinker_kit import ADAM, BASE_MODEL, TASK, service_client

Refusal = Callable[[Any], Any]

REFUSALS: dict[str, tuple[Refusal, type[BaseException], str]] = {
    # 422 at the HTTP level: the SDK sends a NaN learning rate as null.
    "optim_step with a NaN learning rate": (
        lambda tc: tc.optim_step(types.AdamParams(learning_rate=math.nan)).result(),
        tinker.UnprocessableEntityError,
        "invalid OptimStepRequest",
    ),
    # Refused in its turn, as Tinker does: the future fails with a user error.
    "optim_step with a negative learning rate": (
        lambda tc: tc.optim_step(types.AdamParams(learning_rate=-1)).result(),
        tinker.RequestFailedError,
        "Invalid learning_rate: -1",
    ),
    "optim_step with beta1 = 1.5": (
        lambda tc: tc.optim_step(types.AdamParams(beta1=1.5)).result(),
        tinker.RequestFailedError,
        "Invalid beta1: 1.5",
    ),
    "optim_step with a negative weight decay": (
        lambda tc: tc.optim_step(types.AdamParams(weight_decay=-0.1)).result(),
        tinker.RequestFailedError,
        "Invalid weight_decay",
    ),
    # 400 at the HTTP level: a time to live below Tinker's one hour.
    "save_state with ttl_seconds=5": (
        lambda tc: tc.save_state("short", ttl_seconds=5).result(),
        tinker.BadRequestError,
        "ttl_seconds must be between 3600",
    ),
    "save_weights_external": (
        lambda tc: tc.save_weights_external("export").result(),
        tinker.RequestFailedError,
        "external-weights bucket",
    ),
    "load_state of a path of no run": (
        lambda tc: tc.load_state("tinker://../weights/x").result(),
        tinker.RequestFailedError,
        "no training run '..'",
    ),
    "forward_backward with an unknown loss": (
        lambda tc: tc.forward_backward(TASK[:1], "no_such_loss").result(),
        Exception,
        "no_such_loss",
    ),
}


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_a_refused_request_fails_alone_and_the_next_ones_run(
    server: RunningServer, kind: str
) -> None:
    refuse, error, message = REFUSALS[kind]
    client = service_client(server.base_url)
    training = client.create_lora_training_client(BASE_MODEL, rank=4, seed=0).result()
    with pytest.raises(error, match=message):
        refuse(training)
    # The refused request used its seq_id: both later requests run, in order.
    forward_backward = training.forward_backward(TASK[:2], "cross_entropy")
    optim = training.optim_step(ADAM)
    assert forward_backward.result(timeout=60).metrics["loss:sum"] > 0
    optim.result(timeout=60)
    client.close("success").result()


def test_an_unknown_endpoint_uses_up_the_seq_id_and_a_repeat_gets_the_same_refusal(
    server: RunningServer,
) -> None:
    raw = Raw(server.base_url)
    model_id = raw.new_model()
    refused = raw.post("/no_such_endpoint", {"model_id": model_id, "seq_id": 1})
    assert refused.status_code == 404
    assert "has no endpoint POST /api/v1/no_such_endpoint" in refused.json()["detail"]
    # The same seq_id sent again, even to an endpoint that exists, is answered from the record.
    again = raw.post("/optim_step", {"model_id": model_id, "seq_id": 1, "adam_params": {}})
    assert (again.status_code, again.json()) == (404, refused.json())
    waiting = raw.forward_backward(model_id, 2, TASK[:1])
    assert raw.result(waiting).headers["content-type"] == "application/x-protobuf"


def test_a_malformed_body_naming_a_turn_uses_it_up(server: RunningServer) -> None:
    raw = Raw(server.base_url)
    model_id = raw.new_model()
    refused = raw.post("/save_weights", {"model_id": model_id, "seq_id": 1, "path": 7})
    assert refused.status_code == 422
    waiting = raw.forward_backward(model_id, 2, TASK[:1])
    assert raw.result(waiting).headers["content-type"] == "application/x-protobuf"
