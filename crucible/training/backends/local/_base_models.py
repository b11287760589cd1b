"""Named base models: shape, and the pretrained weights shipped in the package.

The weights are produced by ``scripts/pretrain_base.py`` (deterministic under its seed) from
generated plain text; nothing is downloaded. A ``-random`` twin of each model has the same
shape with seeded random weights: the starting point of pretraining, and the control that
shows LoRA needs a pretrained base.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import Any, Final

import attrs
import torch

from crucible.training.backends.local._model import ModelConfig, TinyTransformer, init_weights
from crucible.training.backends.local._tokenizer import ByteTokenizer
from crucible.training.port import UnknownBaseModel

WEIGHTS_FORMAT: Final = "crucible-base-weights/1"
DEFAULT_BASE_MODEL: Final = "crucible/tiny-2l-128"


@attrs.frozen
class BaseModelSpec:
    name: str
    config: ModelConfig
    #: File under ``crucible/training/backends/local/weights/``; None for a seeded random model.
    weights_file: str | None
    random_seed: int = 0


def _specs() -> dict[str, BaseModelSpec]:
    tiny = ModelConfig(vocab_size=ByteTokenizer().vocab_size)
    return {
        DEFAULT_BASE_MODEL: BaseModelSpec(DEFAULT_BASE_MODEL, tiny, "tiny-2l-128.pt"),
        f"{DEFAULT_BASE_MODEL}-random": BaseModelSpec(f"{DEFAULT_BASE_MODEL}-random", tiny, None),
    }


BASE_MODELS: Final[dict[str, BaseModelSpec]] = _specs()


def base_model_spec(name: str) -> BaseModelSpec:
    try:
        return BASE_MODELS[name]
    except KeyError:
        raise UnknownBaseModel(
            f"unknown base model {name!r}; known: {', '.join(sorted(BASE_MODELS))}"
        ) from None


def weights_path(spec: BaseModelSpec) -> Any:
    """The shipped weights file (a Traversable inside the installed package)."""
    assert spec.weights_file is not None
    return (
        importlib.resources.files("crucible.training.backends.local")
        / "weights"
        / spec.weights_file
    )


@functools.cache
def _base_state(name: str) -> dict[str, torch.Tensor]:
    """Base weights, read once per process; callers copy them into their own model."""
    spec = base_model_spec(name)
    if spec.weights_file is None:
        model = TinyTransformer(spec.config)
        init_weights(model, torch.Generator().manual_seed(spec.random_seed))
        return {key: value.detach() for key, value in model.state_dict().items()}
    path = weights_path(spec)
    if not path.is_file():
        raise UnknownBaseModel(
            f"base model {name!r} has no weights file at {path}; reinstall crucible or run "
            "scripts/pretrain_base.py to rebuild it"
        )
    with path.open("rb") as handle:
        payload = torch.load(handle, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise UnknownBaseModel(f"{path} is not a {WEIGHTS_FORMAT} file")
    state: dict[str, torch.Tensor] = payload["state_dict"]
    return state


def load_base_model(name: str) -> TinyTransformer:
    """A fresh model with the named base weights (each call returns an independent copy)."""
    spec = base_model_spec(name)
    model = TinyTransformer(spec.config)
    model.load_state_dict(_base_state(name))
    return model


def save_base_weights(model: TinyTransformer, name: str, destination: Any) -> None:
    """Write ``model``'s weights in the shipped format (used by the pretraining script)."""
    payload = {
        "format": WEIGHTS_FORMAT,
        "base_model": name,
        "config": attrs.asdict(model.config),
        "state_dict": {key: value.detach().clone() for key, value in model.state_dict().items()},
    }
    torch.save(payload, destination)
