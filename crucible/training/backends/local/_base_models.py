"""Finding and loading base models offline: a local directory, a model id in the Hugging Face
cache, or a model shipped in the package. Nothing is ever downloaded.

A loaded base model is kept once per process and shared: its weights are frozen (LoRA trains
adapters beside them), so every engine and sampler built on it shares the same tensors instead
of reading and holding its own copy.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any, Final

import attrs
import torch

from crucible.training.backends.local._tokenizer import HFTokenizer
from crucible.training.port import InvalidBaseModel, ModelTooLarge, UnknownBaseModel

#: The embedded default: a tiny Llama-architecture chat model shipped in the package.
DEFAULT_BASE_MODEL: Final = "crucible/tiny-chat"
_SHIPPED_PREFIX: Final = "crucible/"


@attrs.frozen
class ModelShape:
    context_length: int


@attrs.frozen
class BaseModelSpec:
    """A base model found by name: its Hugging Face model directory."""

    name: str
    directory: Path

    @property
    def config(self) -> ModelShape:
        """What a server advertises about the model (read from config.json, no weights)."""
        try:
            raw = json.loads((self.directory / "config.json").read_text())
        except (OSError, ValueError):
            raw = {}
        for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            if isinstance(raw.get(key), int):
                return ModelShape(int(raw[key]))
        return ModelShape(2048)


def _shipped_dir() -> Path:
    return Path(str(importlib.resources.files("crucible.training.backends.local") / "models"))


def _shipped() -> dict[str, BaseModelSpec]:
    specs = {}
    root = _shipped_dir()
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if (folder / "config.json").is_file():
                name = _SHIPPED_PREFIX + folder.name
                specs[name] = BaseModelSpec(name, folder)
    return specs


#: Models that ship with crucible, by name (any other directory or cached id works as well).
BASE_MODELS: Final[dict[str, BaseModelSpec]] = _shipped()


def resolve_model(name: str) -> BaseModelSpec:
    """Where ``name`` is: a shipped model, a local directory, or a snapshot in the HF cache."""
    if name in BASE_MODELS:
        return BASE_MODELS[name]
    path = Path(name).expanduser()
    if path.is_dir():
        return BaseModelSpec(name, path.resolve())
    looked = [f"the shipped models ({', '.join(sorted(BASE_MODELS))})", f"a directory {path}"]
    if name.count("/") <= 1 and not name.startswith((".", "/", "~")):
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

        try:  # local_files_only: read the cache, never the network (HF_HUB_OFFLINE or not)
            return BaseModelSpec(name, Path(snapshot_download(name, local_files_only=True)))
        except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
            looked.append(f"the Hugging Face cache {constants.HF_HUB_CACHE}")
    raise UnknownBaseModel(
        f"base model {name!r} not found offline; looked in {', '.join(looked)} "
        "(nothing is downloaded: put the model there first)"
    )


def _check_directory(directory: Path) -> None:
    if not (directory / "config.json").is_file():
        raise InvalidBaseModel(f"base model directory {directory} has no config.json")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((directory / file).is_file() for file in tokenizer_files):
        raise InvalidBaseModel(
            f"base model directory {directory} has no tokenizer (tokenizer.json or "
            "tokenizer_config.json)"
        )


def available_memory(device: torch.device) -> int:
    """Bytes free for the model on ``device``."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def check_fits(name: str, parameters: int, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a model whose weights (plus a margin for activations) exceed free memory."""
    needed = int(parameters * dtype.itemsize * 1.2)
    free = available_memory(device)
    if needed > free:
        raise ModelTooLarge(
            f"base model {name!r} needs about {needed / 2**30:.1f} GiB on {device} "
            f"({parameters / 1e6:,.0f}M parameters in {dtype}), but only "
            f"{free / 2**30:.1f} GiB is free"
        )


def default_device() -> tuple[torch.device, torch.dtype]:
    """CUDA in bfloat16 when present, else CPU in float32 (exact and deterministic)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


@functools.cache
def _load(name: str, device_text: str, dtype: torch.dtype) -> tuple[Any, HFTokenizer]:
    device = torch.device(device_text)
    model, tokenizer = _load_directory(name, resolve_model(name).directory, device, dtype)
    model.eval()  # no dropout, ever: training and sampling see the same function
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, tokenizer


def _load_directory(
    name: str, directory: Path, device: torch.device, dtype: torch.dtype
) -> tuple[Any, HFTokenizer]:
    from transformers import AutoConfig, AutoModelForCausalLM

    _check_directory(directory)
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise InvalidBaseModel(
            f"base model {name!r} ({directory}) cannot be read: {error}"
        ) from error
    tokenizer = _read_tokenizer(name, directory)
    with torch.device("meta"):
        try:
            shape = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
        except ValueError as error:
            raise InvalidBaseModel(
                f"base model {name!r} ({directory}) is not a causal language model: {error}"
            ) from error
    check_fits(name, sum(p.numel() for p in shape.parameters()), dtype, device)
    model: Any = AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, dtype=dtype, device_map=None
    )
    model.to(device)
    return model, tokenizer


def _read_tokenizer(name: str, directory: Path) -> HFTokenizer:
    from transformers import AutoTokenizer

    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(directory, local_files_only=True))
    except (OSError, ValueError, KeyError) as error:
        raise InvalidBaseModel(
            f"base model {name!r} ({directory}) cannot be read: {error}"
        ) from error


@functools.cache
def load_tokenizer(name: str) -> HFTokenizer:
    """The tokenizer of base model ``name`` alone (no weights are read)."""
    directory = resolve_model(name).directory
    _check_directory(directory)
    return _read_tokenizer(name, directory)


def load_base_model(
    name: str, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> tuple[Any, HFTokenizer]:
    """A model of its own (modules copied) whose frozen base tensors are shared with every
    other model loaded from ``name`` in this process, and the tokenizer."""
    default_device_, default_dtype = default_device()
    device = device if device is not None else default_device_
    dtype = dtype if dtype is not None else default_dtype
    shared, tokenizer = _load(name, str(device), dtype)
    tensors = {id(t): t for t in (*shared.parameters(), *shared.buffers())}
    return copy.deepcopy(shared, memo=dict(tensors)), tokenizer


def context_length(model: Any) -> int:
    """The longest sequence the model takes (prompt plus completion)."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
