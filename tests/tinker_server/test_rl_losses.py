"""Tinker's RL losses through the unmodified SDK against crucible.tinker_server: the loss and
its ``loss_fn_config`` cross the wire (protobuf, chunked, out of order), the results equal the
local backend's, and a bad config is refused by name (and, through TinkerBackend, typed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import numpy as np
import pytest
import tinker
from tinker import types
from tinker.proto import tinker_public_pb2 as pb

from crucible.tinker_server import RunningServer
from crucible.tinker_server._wire import loss_fn_config
from crucible.training.backends.local import LocalBackend, LocalBackendConfig, LoraConfig
from crucible.training.backends.tinker import TinkerBackend, TinkerBackendConfig
from crucible.training.port import InvalidLossConfig

from .tinker_kit import ADAM, API_KEY, BASE_MODEL, TASK, service_client

PPO_WIDE = {"clip_low_threshold": 0.5, "clip_high_threshold": 1.5}
RANK = 4


def rl_data(logprobs: Sequence[np.ndarray]) -> list[types.Datum]:
    """TASK as sampled completions from a stale sampler (its logprobs 0.3 below the current
    ones), advantages +1 and -0.5 in turn on the completion tokens."""
    data = []
    for index, (datum, lp) in enumerate(zip(TASK, logprobs, strict=True)):
        sign = 1.0 if index % 2 == 0 else -0.5
        data.append(
            types.Datum(
                model_input=datum.model_input,
                loss_fn_inputs={
                    "target_tokens": datum.loss_fn_inputs["target_tokens"],
                    "logprobs": (np.asarray(lp) - 0.3).tolist(),
                    "advantages": [sign * w for w in datum.loss_fn_inputs["weights"].tolist()],
                },
            )
        )
    return data


def ppo_reference(
    data: Sequence[types.Datum], output: types.ForwardBackwardOutput, low: float, high: float
) -> float:
    total = 0.0
    for datum, out in zip(data, output.loss_fn_outputs, strict=True):
        t = out["logprobs"].to_numpy().astype(np.float64)
        s = datum.loss_fn_inputs["logprobs"].to_numpy().astype(np.float64)
        a = datum.loss_fn_inputs["advantages"].to_numpy().astype(np.float64)
        ratio = np.exp(t - s)
        per_token = -np.minimum(ratio * a, np.clip(ratio, low, high) * a)
        np.testing.assert_allclose(out["elementwise_loss"].to_numpy(), per_token, atol=1e-5)
        total += float(per_token.sum())
    return total


def local_backend(root: Path) -> LocalBackend:
    """What the server builds for rank 4 (alpha = 2 * rank) and seed 0."""
    lora = LoraConfig(rank=RANK, alpha=2.0 * RANK)
    return LocalBackend(
        LocalBackendConfig(base_model=BASE_MODEL, lora=lora, seed=0, checkpoint_root=root)
    )


def test_ppo_with_a_config_through_the_sdk_matches_the_local_backend(
    server: RunningServer, tmp_path: Path
) -> None:
    sc = service_client(server.base_url)
    tc = sc.create_lora_training_client(BASE_MODEL, rank=RANK, seed=0).result()
    current = tc.forward(TASK, "cross_entropy").result()
    data = rl_data([out["logprobs"].to_numpy() for out in current.loss_fn_outputs])

    default = tc.forward(data, "ppo").result()
    wide = tc.forward_backward(data, "ppo", loss_fn_config=PPO_WIDE).result()
    tc.optim_step(ADAM).result()
    after = tc.forward(data, "ppo", loss_fn_config=PPO_WIDE).result()
    sc.close("success").result()

    # The chunks (2 datums each) came back in order, each datum with Tinker's outputs.
    assert len(wide.loss_fn_outputs) == len(data)
    assert wide.metrics["loss:sum"] == pytest.approx(ppo_reference(data, wide, 0.5, 1.5), abs=1e-4)
    assert default.metrics["loss:sum"] == pytest.approx(
        ppo_reference(data, default, 0.8, 1.2), abs=1e-4
    )
    assert abs(wide.metrics["loss:sum"] - default.metrics["loss:sum"]) > 0.1  # config arrived

    async def local_run() -> tuple[float, float]:
        async with local_backend(tmp_path) as local:
            first = await (await local.forward_backward(data, "ppo", PPO_WIDE))
            await (await local.optim_step(ADAM))
            second = await (await local.forward(data, "ppo", PPO_WIDE))
            return first.metrics["loss:sum"], second.metrics["loss:sum"]

    local_first, local_after = anyio.run(local_run)
    # Chunked accumulation reorders float sums: equal up to rounding.
    assert wide.metrics["loss:sum"] == pytest.approx(local_first, rel=1e-4, abs=1e-4)
    assert after.metrics["loss:sum"] == pytest.approx(local_after, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize(
    ("loss_fn", "config", "message"),
    [
        ("ppo", {"epsilon": 0.2}, r"InvalidLossConfig: .*unknown keys \['epsilon'\]"),
        ("dro", {"beta": "high"}, r"InvalidLossConfig: .*\['beta'\] must be a number"),
        ("cispo", {"clip_low_threshold": 5.0}, "InvalidLossConfig: .*0 <= clip_low_threshold"),
    ],
)
def test_a_bad_config_is_refused_by_name_and_the_client_carries_on(
    server: RunningServer, loss_fn: str, config: dict[str, float | str], message: str
) -> None:
    sc = service_client(server.base_url)
    tc = sc.create_lora_training_client(BASE_MODEL, rank=RANK, seed=0).result()
    current = tc.forward(TASK, "cross_entropy").result()
    data = rl_data([out["logprobs"].to_numpy() for out in current.loss_fn_outputs])
    with pytest.raises(tinker.RequestFailedError, match=message):
        tc.forward_backward(data, loss_fn, loss_fn_config=config).result()  # type: ignore[arg-type]
    with pytest.raises(tinker.RequestFailedError, match=r"InvalidDatum: .*lacks loss_fn_inputs"):
        tc.forward_backward(TASK, "importance_sampling").result()
    ok = tc.forward_backward(data, "importance_sampling").result()
    assert ok.metrics["loss:sum"] != 0.0
    tc.optim_step(ADAM).result()
    sc.close("success").result()


def test_the_wire_config_prefers_v2_and_reads_the_legacy_map() -> None:
    message = pb.ForwardBackwardRequest(model_id="m", loss_fn="ppo")
    assert loss_fn_config(message) is None
    message.loss_fn_config["clip_low_threshold"] = 0.7  # what an older SDK sends
    assert loss_fn_config(message) == {"clip_low_threshold": pytest.approx(0.7)}
    message.loss_fn_config_v2["clip_low_threshold"].number = 0.6
    message.loss_fn_config_v2["mode"].text = "token"
    assert loss_fn_config(message) == {"clip_low_threshold": 0.6, "mode": "token"}


@pytest.mark.anyio
async def test_tinker_backend_passes_the_config_and_types_the_refusal(
    server: RunningServer,
) -> None:
    config = TinkerBackendConfig(
        base_model=BASE_MODEL, lora_rank=RANK, seed=0, base_url=server.base_url, api_key=API_KEY
    )
    async with TinkerBackend(config) as backend:
        current = await (await backend.forward(TASK))
        data = rl_data([out["logprobs"].to_numpy() for out in current.loss_fn_outputs])
        output = await (await backend.forward_backward(data, "ppo", PPO_WIDE))
        assert output.metrics["loss:sum"] == pytest.approx(
            ppo_reference(data, output, 0.5, 1.5), abs=1e-4
        )
        with pytest.raises(InvalidLossConfig, match="epsilon"):
            await (await backend.forward_backward(data, "ppo", {"epsilon": 0.2}))
        await (await backend.optim_step(ADAM))
