"""Which models the server serves, under which names, and how clients' tokenizers find them."""

from __future__ import annotations

from pathlib import Path

import pytest
import tinker
from tinker import types
from transformers import AutoTokenizer

from crucible.tinker_server import ServerConfig, running_server
from crucible.tinker_server.__main__ import parse_args
from crucible.tinker_server._served import link_hf_cache, parse_model_spec
from crucible.training import UnknownBaseModel
from crucible.training.backends.local import BASE_MODELS

from .tinker_kit import ADAM, API_KEY, service_client

TINY_CHAT = BASE_MODELS["crucible/tiny-chat"].directory
assert TINY_CHAT is not None


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("mine=/models/x", ("mine", "/models/x")),
        ("org/name = /m", ("org/name", "/m")),
        ("crucible/tiny-chat", ("crucible/tiny-chat", "crucible/tiny-chat")),
    ],
)
def test_a_model_spec_is_name_equals_path_or_a_name(spec: str, parsed: tuple[str, str]) -> None:
    assert parse_model_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["", "=/models/x", "mine=", " = "])
def test_a_malformed_model_spec_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="NAME=PATH or NAME"):
        ServerConfig(models=(spec,))


def test_without_models_the_shipped_ones_are_served() -> None:
    assert set(ServerConfig().served.models) == set(BASE_MODELS)


def test_a_model_that_is_nowhere_fails_when_the_config_is_made(tmp_path: Path) -> None:
    with pytest.raises(UnknownBaseModel, match="not found offline"):
        ServerConfig(models=(f"mine={tmp_path / 'absent'}",))
    with pytest.raises(SystemExit):  # the CLI reports it as a usage error
        parse_args(["--model", f"mine={tmp_path / 'absent'}"])


def test_a_directory_model_is_served_by_its_name_and_by_its_absolute_path() -> None:
    served = ServerConfig(models=(f"mine={TINY_CHAT}",)).served
    assert list(served.models) == ["mine"]
    assert served.lookup("mine") is served.lookup(str(TINY_CHAT))
    assert served.lookup(str(TINY_CHAT / ".." / TINY_CHAT.name)).name == "mine"
    # The shipped directory keeps its shipped name as what the backend loads (one copy).
    assert served.source(str(TINY_CHAT)) == "crucible/tiny-chat"
    with pytest.raises(UnknownBaseModel, match="serves mine") as refused:
        served.lookup("crucible/tiny-chat")
    assert str(TINY_CHAT) in str(refused.value) and "--model NAME=PATH" in str(refused.value)
    with pytest.raises(UnknownBaseModel):
        served.lookup("relative/tiny-chat")  # only absolute paths are aliases


def test_the_hf_cache_layout_lets_autotokenizer_load_the_served_name_offline(
    tmp_path: Path,
) -> None:
    config = ServerConfig(models=("crucible/tiny-chat", f"plain={TINY_CHAT}"))
    cache = tmp_path / "hub"
    assert link_hf_cache(config.served, cache) == ["crucible/tiny-chat"]  # "plain" is no id
    assert link_hf_cache(config.served, cache) == ["crucible/tiny-chat"]  # idempotent
    tokenizer = AutoTokenizer.from_pretrained(
        "crucible/tiny-chat", cache_dir=cache, local_files_only=True
    )
    reference = AutoTokenizer.from_pretrained(TINY_CHAT, local_files_only=True)
    conversation = [{"role": "user", "content": "What is 12 + 34?"}]
    ids = tokenizer.apply_chat_template(conversation, return_dict=False)
    assert ids == reference.apply_chat_template(conversation, return_dict=False) and len(ids) > 5
    snapshots = list((cache / "models--crucible--tiny-chat" / "snapshots").iterdir())
    assert len(snapshots) == 1 and (snapshots[0] / "model.safetensors").resolve() == (
        TINY_CHAT / "model.safetensors"
    )


def test_the_sdk_trains_a_model_named_by_its_directory(tmp_path: Path) -> None:
    config = ServerConfig(port=0, root=tmp_path, api_keys={API_KEY}, models=(f"mine={TINY_CHAT}",))
    with running_server(config) as server:
        client = service_client(server.base_url)
        rest = tinker.RestClient(base_url=server.base_url, api_key=API_KEY)
        capabilities = rest.get_server_capabilities().result()
        assert [m.model_name for m in capabilities.supported_models] == ["mine"]
        training = client.create_lora_training_client(str(TINY_CHAT), rank=2, seed=1).result()
        model_data = training.get_info().model_data
        assert (model_data.model_name, model_data.tokenizer_id) == (
            str(TINY_CHAT),
            "crucible/tiny-chat",
        )
        tokenizer = AutoTokenizer.from_pretrained(TINY_CHAT)
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
            return_dict=False,
        )
        datum = types.Datum(
            model_input=types.ModelInput.from_ints(ids[:-1]),
            loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)},
        )
        output = training.forward_backward([datum], "cross_entropy").result()
        assert len(output.loss_fn_outputs) == 1
        training.optim_step(ADAM).result()
        with pytest.raises(Exception, match="unknown base model 'crucible/tiny-chat'"):
            client.create_lora_training_client("crucible/tiny-chat", rank=2).result()
