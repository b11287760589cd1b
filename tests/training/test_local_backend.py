from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio
import pytest
import torch
from tinker import types

from crucible.training import (
    BackendClosed,
    CheckpointCorrupt,
    CheckpointMismatch,
    CheckpointNotFound,
    InvalidCheckpointPath,
    InvalidDatum,
    TrainingBackend,
    UnsupportedLossFn,
)
from crucible.training.backends.local import LocalBackend, LocalBackendConfig, LoraConfig
from crucible.training.backends.local._engine import LocalEngine
from crucible.training.backends.local._lora import lora_parameters

from .training_kit import ADAM, TINY_TASK, TOKENIZER, make_datum

pytestmark = pytest.mark.anyio

MakeConfig = Callable[..., LocalBackendConfig]


async def train(
    backend: LocalBackend, steps: int, data: Sequence[types.Datum] = TINY_TASK
) -> list[float]:
    """``steps`` pipelined train steps (optim_step submitted before the fwd/bwd result is
    awaited); returns each step's loss."""
    losses = []
    for _ in range(steps):
        fwd_bwd = await backend.forward_backward(data)
        optim = await backend.optim_step(ADAM)
        losses.append((await fwd_bwd).metrics["loss:sum"])
        await optim
    return losses


async def weights(backend: LocalBackend) -> dict[str, torch.Tensor]:
    return await (await backend.weights_snapshot())


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    unequal = [key for key in a if not torch.equal(a[key], b[key])]
    assert not unequal, f"tensors differ: {unequal}"


async def test_satisfies_the_protocol(make_config: MakeConfig) -> None:
    async with LocalBackend(make_config()) as backend:
        assert isinstance(backend, TrainingBackend)
        info = backend.info()
        assert info.is_lora and info.lora_rank == 4
        assert info.model_data.model_name == "crucible/tiny-2l-128"


async def test_loss_decreases_on_a_tiny_task(make_config: MakeConfig) -> None:
    async with LocalBackend(make_config()) as backend:
        losses = await train(backend, 12)
    assert losses[-1] < 0.5 * losses[0], losses


async def test_results_carry_per_datum_logprobs_and_tinker_metric_keys(
    make_config: MakeConfig,
) -> None:
    async with LocalBackend(make_config()) as backend:
        result = await (await backend.forward(TINY_TASK))
        optim = await (await backend.optim_step(ADAM))
    assert len(result.loss_fn_outputs) == len(TINY_TASK)
    for datum, output in zip(TINY_TASK, result.loss_fn_outputs, strict=True):
        logprobs = output["logprobs"].to_torch()
        assert logprobs.shape == (datum.model_input.length,)
        assert bool((logprobs <= 0).all())
    weighted = sum(
        -(out["logprobs"].to_torch() * datum.loss_fn_inputs["weights"].to_torch()).sum()
        for datum, out in zip(TINY_TASK, result.loss_fn_outputs, strict=True)
    )
    assert result.metrics["loss:sum"] == pytest.approx(float(weighted), rel=1e-5)
    assert optim.metrics is not None
    for key in [*result.metrics, *optim.metrics]:
        name, reduction = key.split(":")  # the Tinker SDK splits every key like this
        assert name and reduction in {"mean", "sum", "min", "max"}


async def test_forward_does_not_change_weights_or_accumulate(make_config: MakeConfig) -> None:
    async with LocalBackend(make_config()) as backend:
        before = await weights(backend)
        await (await backend.forward(TINY_TASK))
        await (await backend.optim_step(ADAM))  # no gradients: nothing to apply
        assert_bitwise_equal(before, await weights(backend))


def test_accumulated_gradients_match_one_big_batch(make_config: MakeConfig) -> None:
    """Split batches sum to the full batch's gradients up to float reordering (~1e-7)."""
    half = len(TINY_TASK) // 2
    whole, split = LocalEngine(make_config()), LocalEngine(make_config())
    full_loss = whole.forward_backward(TINY_TASK, "cross_entropy").metrics["loss:sum"]
    parts = [
        split.forward_backward(part, "cross_entropy")
        for part in (TINY_TASK[:half], TINY_TASK[half:])
    ]
    assert sum(p.metrics["loss:sum"] for p in parts) == pytest.approx(full_loss, rel=1e-6)
    grads_whole = {k: p.grad for k, p in lora_parameters(whole.model).items()}
    grads_split = {k: p.grad for k, p in lora_parameters(split.model).items()}
    for key, grad in grads_whole.items():
        assert grad is not None and grads_split[key] is not None
        torch.testing.assert_close(grads_split[key], grad, rtol=1e-5, atol=1e-6)


async def test_gradient_accumulation_trains_like_one_big_batch(make_config: MakeConfig) -> None:
    half = len(TINY_TASK) // 2
    async with LocalBackend(make_config()) as whole, LocalBackend(make_config()) as split:
        for _ in range(3):
            await (await whole.forward_backward(TINY_TASK))
            full = await (await whole.optim_step(ADAM))
            first = await split.forward_backward(TINY_TASK[:half])
            second = await split.forward_backward(TINY_TASK[half:])
            parts = await split.optim_step(ADAM)
            await first
            await second
            assert full.metrics is not None and (metrics := (await parts).metrics) is not None
            assert metrics["grad_norm:mean"] == pytest.approx(
                full.metrics["grad_norm:mean"], rel=1e-5
            )
        a, b = await weights(whole), await weights(split)
    for key in a:
        # Adam divides by sqrt(v): for a near-zero gradient a 1e-7 difference can move that
        # weight by a fraction of lr (1e-2); the bound is lr-relative, not machine precision.
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-4)


async def test_same_seed_and_ops_give_bitwise_equal_weights(make_config: MakeConfig) -> None:
    async with (
        LocalBackend(make_config(run_id="a")) as first,
        LocalBackend(make_config(run_id="b")) as second,
        LocalBackend(make_config(run_id="c", seed=1)) as other_seed,
    ):
        for backend in (first, second, other_seed):
            await train(backend, 4)
        a, b, c = await weights(first), await weights(second), await weights(other_seed)
    assert_bitwise_equal(a, b)
    assert any(not torch.equal(a[key], c[key]) for key in a)


async def test_save_load_round_trip_mid_run_is_bitwise_exact(make_config: MakeConfig) -> None:
    async with LocalBackend(make_config(run_id="reference")) as reference:
        await train(reference, 6)
        expected = await weights(reference)

    async with LocalBackend(make_config(run_id="interrupted")) as interrupted:
        await train(interrupted, 3)
        saved = await (await interrupted.save_state("mid"))
        await train(interrupted, 2)  # work after the checkpoint, lost in the "crash"
    assert saved.path == "local://interrupted/weights/mid"

    # A new backend (as after a restart) resumes from the checkpoint and replays the rest.
    async with LocalBackend(make_config(run_id="resumed")) as resumed:
        loaded = await (await resumed.load_state(saved.path))
        assert loaded.path == saved.path
        assert resumed.step == 3
        await train(resumed, 3)
        assert_bitwise_equal(expected, await weights(resumed))


async def test_load_without_optimizer_resets_adam(make_config: MakeConfig) -> None:
    async with LocalBackend(make_config()) as backend:
        await train(backend, 2)
        path = (await (await backend.save_state("s"))).path
        await train(backend, 1)
        with_adam = await weights(backend)
        await (await backend.load_state(path, with_optimizer=False))
        await train(backend, 1)
        fresh_adam = await weights(backend)
    assert any(not torch.equal(with_adam[key], fresh_adam[key]) for key in with_adam)


async def test_bad_checkpoint_paths_and_files_raise_clear_errors(make_config: MakeConfig) -> None:
    async with LocalBackend(make_config()) as backend:
        path = (await (await backend.save_state("good"))).path
        for bad in ("tinker://x/weights/y", "local://x/y", "local://../weights/y"):
            with pytest.raises(InvalidCheckpointPath):
                await (await backend.load_state(bad))
        with pytest.raises(CheckpointNotFound, match="missing"):
            await (await backend.load_state("local://test-run/weights/missing"))
        sampler_path = (await (await backend.save_weights_for_sampler("good"))).path
        with pytest.raises(CheckpointMismatch, match="sampler weights only"):
            await (await backend.load_state(sampler_path))

        state_file = backend.config.checkpoint_root / "test-run" / "good" / "state.pt"
        state_file.write_bytes(state_file.read_bytes()[:1000])  # truncated
        with pytest.raises(CheckpointCorrupt, match="cannot be read"):
            await (await backend.load_state(path))
        state_file.write_bytes(b"not a checkpoint")
        with pytest.raises(CheckpointCorrupt):
            await (await backend.load_state(path))

    async with LocalBackend(make_config()) as writer:
        path = (await (await writer.save_state("rank4"))).path
    async with LocalBackend(make_config(lora=LoraConfig(rank=8, alpha=8.0))) as other:
        with pytest.raises(CheckpointMismatch, match="rank"):
            await (await other.load_state(path))


async def test_failed_load_leaves_the_backend_unchanged(make_config: MakeConfig) -> None:
    async with LocalBackend(make_config()) as backend:
        await train(backend, 1)
        before = await weights(backend)
        with pytest.raises(CheckpointNotFound):
            await (await backend.load_state("local://test-run/weights/nope"))
        assert_bitwise_equal(before, await weights(backend))
        assert backend.step == 1


async def test_invalid_data_raise_invalid_datum(make_config: MakeConfig) -> None:
    too_long = make_datum("x" * 80)
    mismatched = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, 1.0]},
    )
    out_of_vocab = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={"target_tokens": [2, 99999]},
    )
    nan_weight = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, float("nan")]},
    )
    async with LocalBackend(make_config()) as backend:
        for data, match in (
            ([too_long], "context"),
            ([nan_weight], "non-finite"),
            ([mismatched], "one entry per input token"),
            ([out_of_vocab], "outside"),
            ([], "at least one"),
        ):
            with pytest.raises(InvalidDatum, match=match):
                await (await backend.forward_backward(data))
        with pytest.raises(UnsupportedLossFn, match=r"'gspo'.*importance_sampling"):
            await (await backend.forward_backward(TINY_TASK, loss_fn="gspo"))
        # failed ops leave nothing behind: the next step works
        assert (await train(backend, 1))[0] > 0


async def test_a_cancelled_waiter_does_not_cancel_the_op(make_config: MakeConfig) -> None:
    async with LocalBackend(make_config()) as backend:
        fwd_bwd = await backend.forward_backward(TINY_TASK)
        optim = await backend.optim_step(ADAM)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await optim  # the waiter is cancelled at once
        assert scope.cancelled_caught
        await fwd_bwd
        response = await optim  # the op itself ran to completion
        assert response.metrics is not None and response.metrics["step:max"] == 1.0
        assert backend.step == 1


async def test_closed_backend_refuses_work(make_config: MakeConfig) -> None:
    backend = LocalBackend(make_config())
    await backend.aclose()
    with pytest.raises(BackendClosed):
        await backend.forward_backward(TINY_TASK)


# ---- sampling -------------------------------------------------------------------------------

PROMPT = types.ModelInput.from_ints([TOKENIZER.bos_token_id, *TOKENIZER.encode("12 + 12 =")])


async def test_sampling_is_seeded_and_logprobs_match_compute_logprobs(
    make_config: MakeConfig,
) -> None:
    params = types.SamplingParams(max_tokens=8, temperature=1.0, seed=7, stop=[])
    async with LocalBackend(make_config()) as backend:
        client = await (await backend.sampling_client())
        first = await (await client.sample(PROMPT, 3, params))
        again = await (await client.sample(PROMPT, 3, params))
        assert [s.tokens for s in first.sequences] == [s.tokens for s in again.sequences]
        for sequence in first.sequences:
            # an empty stop list still stops at end-of-sequence
            ended = sequence.tokens[-1] == TOKENIZER.eos_token_id
            assert sequence.stop_reason == ("stop" if ended else "length")
            assert len(sequence.tokens) == 8 or ended
            full = types.ModelInput.from_ints([*PROMPT.to_ints(), *sequence.tokens])
            scored = await (await client.compute_logprobs(full))
            assert scored[0] is None
            assert sequence.logprobs == pytest.approx(scored[-len(sequence.tokens) :], abs=1e-4)


async def test_sampling_stops_and_greedy_is_argmax(make_config: MakeConfig) -> None:
    async with LocalBackend(make_config()) as backend:
        client = await (await backend.sampling_client())
        greedy = await (
            await client.sample(PROMPT, 2, types.SamplingParams(max_tokens=6, temperature=0))
        )
        a, b = greedy.sequences
        assert a.tokens == b.tokens
        first_token = a.tokens[0]
        stopped = await (
            await client.sample(
                PROMPT, 1, types.SamplingParams(max_tokens=6, temperature=0, stop=[first_token])
            )
        )
        assert stopped.sequences[0].tokens == [first_token]
        assert stopped.sequences[0].stop_reason == "stop"
        text = TOKENIZER.decode(a.tokens[:2])
        by_string = await (
            await client.sample(
                PROMPT, 1, types.SamplingParams(max_tokens=6, temperature=0, stop=text)
            )
        )
        assert by_string.sequences[0].tokens == a.tokens[:2]
        nucleus = await (
            await client.sample(
                PROMPT, 4, types.SamplingParams(max_tokens=3, top_p=1e-6, seed=3, stop=[])
            )
        )
        assert all(s.tokens == a.tokens[:3] for s in nucleus.sequences)  # top_p→0 is greedy


async def test_sampler_weights_round_trip_to_a_sampling_client(make_config: MakeConfig) -> None:
    params = types.SamplingParams(max_tokens=5, seed=1, stop=[])
    async with LocalBackend(make_config()) as backend:
        await train(backend, 3)
        snapshot = await (await backend.sampling_client())
        saved = await (await backend.save_weights_for_sampler("s3"))
        await train(backend, 2)  # later training must not leak into the saved weights
        from_file = await (await backend.sampling_client(saved.path))
        expected = await (await snapshot.compute_logprobs(PROMPT))
        assert await (await from_file.compute_logprobs(PROMPT)) == expected
        a = await (await snapshot.sample(PROMPT, 2, params))
        b = await (await from_file.sample(PROMPT, 2, params))
        assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
        with pytest.raises(CheckpointNotFound):
            await (await backend.sampling_client("local://test-run/sampler_weights/none"))


async def test_delete_checkpoint_removes_files_and_is_idempotent(make_config: MakeConfig) -> None:
    async with LocalBackend(make_config()) as backend:
        state = (await (await backend.save_state("both"))).path
        sampler = (await (await backend.save_weights_for_sampler("both"))).path
        folder = backend.config.checkpoint_root / "test-run" / "both"
        await (await backend.delete_checkpoint(state))
        assert sorted(p.name for p in folder.iterdir()) == ["sampler.pt"]
        await (await backend.delete_checkpoint(sampler))
        await (await backend.delete_checkpoint(sampler))
        assert not folder.exists()
        with pytest.raises(CheckpointNotFound):
            await (await backend.load_state(state))
