"""What the Tinker server tests share: the API key, the base model, training data, and SDK
clients pointed at a server (the server itself runs in-process, from ``running_server``)."""

from __future__ import annotations

import os

import tinker
from tinker import types

from crucible.training.backends.local import ByteTokenizer

# The SDK's telemetry posts in the background every 10 s; the tests do not need it.
os.environ.setdefault("TINKER_TELEMETRY", "0")

API_KEY = "tml-crucible-test"
BASE_MODEL = "crucible/tiny-2l-128"
TOKENIZER = ByteTokenizer()
ADAM = types.AdamParams(learning_rate=1e-2)


def make_datum(text: str, *, prompt_chars: int = 0) -> types.Datum:
    ids = [TOKENIZER.bos_token_id, *TOKENIZER.encode(text), TOKENIZER.eos_token_id]
    weights = [0.0 if i < prompt_chars else 1.0 for i in range(len(ids) - 1)]
    return types.Datum(
        model_input=types.ModelInput.from_ints(ids[:-1]),
        loss_fn_inputs={"target_tokens": ids[1:], "weights": weights},
    )


TASK = [make_datum(f"{a} + {a} = {2 * a}", prompt_chars=5) for a in range(10, 15)]


def service_client(base_url: str, api_key: str = API_KEY) -> tinker.ServiceClient:
    return tinker.ServiceClient(base_url=base_url, api_key=api_key)
