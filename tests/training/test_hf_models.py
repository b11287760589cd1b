"""The local backend on Hugging Face models the tests build and save themselves (tiny Llama,
Qwen2 and GPT-2 configs with a byte-level tokenizer and a chat template), and its errors on
bad models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tinker import types

from crucible.training.backends.local import (
    ByteTokenizer,
    LocalBackend,
    LocalBackendConfig,
    LoraConfig,
    resolve_model,
)
from crucible.training.backends.local._base_models import check_fits
from crucible.training.port import (
    InvalidBaseModel,
    InvalidLoraTarget,
    ModelTooLarge,
    UnknownBaseModel,
)

from .training_kit import ADAM, TINY_TASK

pytestmark = pytest.mark.anyio


def _config(kind: str) -> Any:
    import transformers

    common = {"vocab_size": 264, "bos_token_id": 257, "eos_token_id": 258, "pad_token_id": 256}
    if kind == "gpt2":
        return transformers.GPT2Config(n_positions=128, n_embd=32, n_layer=2, n_head=2, **common)
    shape = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 128,
        **common,
    }
    return (transformers.LlamaConfig if kind == "llama" else transformers.Qwen2Config)(**shape)


def save_tiny_model(kind: str, folder: Path, *, tokenizer: bool = True) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_config(kind)).save_pretrained(folder)
    if tokenizer:
        ByteTokenizer().hf.save_pretrained(folder)
    return folder


@pytest.fixture(params=["llama", "qwen2", "gpt2"])
def model_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return save_tiny_model(request.param, tmp_path / request.param)


async def test_trains_samples_and_replays_bitwise_on_each_architecture(
    model_dir: Path, make_config: Callable[..., LocalBackendConfig]
) -> None:
    runs = []
    for _ in range(2):
        async with LocalBackend(make_config(base_model=str(model_dir))) as backend:
            losses = []
            for _ in range(6):
                fb = await backend.forward_backward(TINY_TASK)
                await (await backend.optim_step(ADAM))
                losses.append((await fb).metrics["loss:sum"])
            assert losses[-1] < losses[0]
            runs.append(await (await backend.weights_snapshot()))
            client = await (await backend.sampling_client())
            prompt = types.ModelInput.from_ints(TINY_TASK[0].model_input.to_ints()[:6])
            params = types.SamplingParams(max_tokens=4, temperature=0.0)
            response = await (await client.sample(prompt, 2, params))
            assert all(1 <= len(s.tokens) <= 4 for s in response.sequences)
    assert runs[0].keys() == runs[1].keys() and runs[0]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


async def test_batched_samples_equal_one_at_a_time(
    model_dir: Path, make_config: Callable[..., LocalBackendConfig]
) -> None:
    prompts = [
        types.ModelInput.from_ints(d.model_input.to_ints()[: 4 + i])
        for i, d in enumerate(TINY_TASK)
    ]
    params = types.SamplingParams(max_tokens=5, temperature=0.0)
    async with LocalBackend(make_config(base_model=str(model_dir))) as backend:
        client = await (await backend.sampling_client())
        futures = [await client.sample(p, 1, params) for p in prompts]  # batched together
        together = [(await f).sequences[0].tokens for f in futures]
        alone = [(await (await client.sample(p, 1, params))).sequences[0].tokens for p in prompts]
    assert together == alone


def test_lora_switches_map_to_each_architectures_modules(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from crucible.training.backends.local import resolve_targets

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    attn = resolve_targets(model, LoraConfig(train_mlp=False, train_unembed=False))
    mlp = resolve_targets(model, LoraConfig(train_attn=False, train_unembed=False))
    head = resolve_targets(model, LoraConfig(train_attn=False, train_mlp=False))
    assert attn and mlp and head == ["lm_head"]
    assert all("attn" in name for name in attn) and all("mlp" in name for name in mlp)
    with pytest.raises(InvalidLoraTarget, match="no_such_proj"):
        resolve_targets(model, LoraConfig(target_modules=("no_such_proj",)))


def test_bad_models_raise_typed_errors_naming_the_problem(tmp_path: Path) -> None:
    with pytest.raises(UnknownBaseModel, match="Hugging Face cache"):
        resolve_model("nobody/no-such-model")
    empty = tmp_path / "empty"
    empty.mkdir()
    no_tokenizer = save_tiny_model("llama", tmp_path / "bare", tokenizer=False)
    for folder, problem in ((empty, "no config.json"), (no_tokenizer, "no tokenizer")):
        with pytest.raises(InvalidBaseModel, match=problem):
            LocalBackend(LocalBackendConfig(base_model=str(folder), checkpoint_root=tmp_path))
    with pytest.raises(ModelTooLarge, match="GiB"):
        check_fits("huge", 10**13, torch.float32, torch.device("cpu"))
