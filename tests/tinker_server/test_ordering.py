"""The server applies a model's requests in seq_id order, whatever order they arrive in."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.tinker_server import RunningServer
from crucible.tinker_server._futures import FutureTable, Pending
from crucible.tinker_server._models import RunInfo, TrainingModel
from crucible.training.backends.local import LocalBackend, LocalBackendConfig, LoraConfig

from .tinker_kit import ADAM, BASE_MODEL, TASK, service_client


def _model() -> TrainingModel:
    run = RunInfo("000000000000000a:train:0", BASE_MODEL, lora_rank=4, seed=0)
    backend: Any = None  # the sequencer never touches the backend itself
    return TrainingModel("000000000000000a:train:0", "s", run, backend)


@settings(deadline=None, max_examples=50)
@given(st.permutations(list(range(1, 9))), st.lists(st.integers(1, 8), max_size=6))
def test_requests_run_in_seq_order_and_resubmits_get_the_first_id(
    arrivals: list[int], resubmits: list[int]
) -> None:
    async def main() -> None:
        model, futures = _model(), FutureTable()
        applied: list[int] = []
        first_ids: dict[int, str] = {}

        def submitter(seq: int) -> Any:
            async def submit(_pending: Pending) -> None:
                applied.append(seq)

            return submit

        for seq in arrivals:
            first_ids[seq] = await model.accept(seq, futures, submitter(seq))
            for again in resubmits:  # retries of requests already seen change nothing
                if again in first_ids:
                    assert await model.accept(again, futures, submitter(again)) == first_ids[again]
        assert applied == sorted(arrivals)
        assert model.buffered == []
        assert len(set(first_ids.values())) == len(arrivals)

    anyio.run(main)


def test_a_gap_holds_later_requests_until_it_is_filled() -> None:
    async def main() -> None:
        model, futures = _model(), FutureTable()
        applied: list[int] = []

        async def record(_pending: Pending) -> None:
            applied.append(model.next_seq - 1)

        await model.accept(3, futures, record)
        await model.accept(2, futures, record)
        assert applied == [] and model.buffered == [2, 3]
        await model.accept(1, futures, record)
        assert applied == [1, 2, 3] and model.buffered == []

    anyio.run(main)


def test_a_request_whose_submission_fails_still_gets_an_outcome() -> None:
    async def main() -> None:
        model, futures = _model(), FutureTable()

        async def broken(_pending: Pending) -> None:
            raise ValueError("cannot decode this datum")

        request_id = await model.accept(1, futures, broken)
        pending = futures.get(request_id)
        assert pending is not None and pending.outcome is not None
        assert b'"category": "user"' in pending.outcome.body
        assert model.next_seq == 2

    anyio.run(main)


def test_chunked_forward_backward_accumulates_like_one_local_batch(
    server: RunningServer, tmp_path: Any
) -> None:
    """Five datums in chunks of two reach the server as three requests, the first chunk last;
    the gradients they accumulate give the same step as one local forward_backward."""
    client = service_client(server.base_url)
    training = client.create_lora_training_client(BASE_MODEL, rank=4, seed=3).result()
    fwd_bwd = training.forward_backward(TASK, "cross_entropy")
    training.optim_step(ADAM).result()
    remote = fwd_bwd.result()
    after = training.forward(TASK, "cross_entropy").result()
    client.close("success").result()

    async def local() -> tuple[Any, Any]:
        config = LocalBackendConfig(
            base_model=BASE_MODEL,
            lora=LoraConfig(rank=4, alpha=8.0),
            seed=3,
            checkpoint_root=tmp_path,
            run_id="ref",
        )
        async with LocalBackend(config) as backend:
            first = await backend.forward_backward(TASK)
            await (await backend.optim_step(ADAM))
            return await first, await (await backend.forward(TASK))

    expected, expected_after = anyio.run(local)
    assert len(remote.loss_fn_outputs) == len(TASK)
    assert remote.metrics["loss:sum"] == pytest.approx(expected.metrics["loss:sum"], rel=1e-5)
    for got, want in zip(after.loss_fn_outputs, expected_after.loss_fn_outputs, strict=True):
        np.testing.assert_allclose(
            got["logprobs"].to_numpy(), want["logprobs"].to_numpy(), rtol=1e-4, atol=1e-5
        )
