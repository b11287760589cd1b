"""LoRA through peft on any causal LM: Tinker's train_attn / train_mlp / train_unembed switches
mapped onto each architecture's own module names, or explicit target modules.

Modules are classified by where they sit, not by a per-architecture table: a linear layer
(``nn.Linear`` or GPT-2's ``Conv1D``) under an attention block (``self_attn``, ``attn``,
``attention``) is attention, under ``mlp`` / ``feed_forward`` / ``ffn`` is the MLP, and the
output embedding is the unembedding. That covers Llama, Qwen2, GPT-2, Mistral, Phi and most
others transformers has.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Final

import attrs
import torch
from torch import nn

from crucible.training.port import InvalidLoraTarget

_ATTENTION: Final = ("attn", "attention")
_MLP: Final = ("mlp", "feed_forward", "ffn")
#: Llama-style names of the attention and MLP projections (what most architectures call them).
LORA_TARGETS: Final[tuple[str, ...]] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class LoraConfig:
    """LoRA adapters: ``rank``, ``alpha`` (scale = alpha / rank) and which modules get them.

    ``target_modules`` (module names or name suffixes, as peft takes them) wins when given;
    when empty, the Tinker switches choose: attention, MLP, and the unembedding (output head).
    """

    rank: int = 16
    alpha: float = 32.0
    target_modules: tuple[str, ...] = attrs.field(default=(), converter=_names)
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True

    def __attrs_post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.target_modules and not (
            self.train_attn or self.train_mlp or self.train_unembed
        ):
            raise ValueError("LoRA needs train_attn, train_mlp or train_unembed")


def _linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    from transformers.pytorch_utils import Conv1D

    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | Conv1D)
    }


def _role(name: str, unembed: str | None) -> str | None:
    if name == unembed:
        return "unembed"
    parts = name.split(".")[:-1]
    if any(any(key in part for key in _ATTENTION) for part in parts):
        return "attn"
    if any(any(key == part or part.endswith(key) for key in _MLP) for part in parts):
        return "mlp"
    return None


def resolve_targets(model: nn.Module, lora: LoraConfig) -> list[str]:
    """The full names of the modules to adapt; InvalidLoraTarget if a requested target or
    switch matches nothing in this architecture."""
    linear = _linear_modules(model)
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    unembed = next((n for n, m in linear.items() if m is output), None)
    architecture = type(model).__name__
    if lora.target_modules:
        chosen: list[str] = []
        for target in lora.target_modules:
            hits = [n for n in linear if n == target or n.endswith("." + target)]
            if not hits:
                suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear})
                raise InvalidLoraTarget(
                    f"LoRA target {target!r} matches no linear module of {architecture}; "
                    f"it has: {', '.join(suffixes)}"
                )
            chosen += [n for n in hits if n not in chosen]
        return chosen
    wanted = {
        role
        for role, on in (
            ("attn", lora.train_attn),
            ("mlp", lora.train_mlp),
            ("unembed", lora.train_unembed),
        )
        if on
    }
    roles = {name: _role(name, unembed) for name in linear}
    for role in sorted(wanted):
        if role not in roles.values():
            raise InvalidLoraTarget(
                f"train_{role} is set but {architecture} has no {role} linear modules that "
                "LoRA can adapt; turn it off or name target_modules"
            )
    return [name for name, role in roles.items() if role in wanted]


def apply_lora(model: nn.Module, lora: LoraConfig, seed: int) -> Any:
    """The model with peft LoRA adapters; A is initialised from ``seed`` (B starts at zero),
    so the same seed gives the same adapters bitwise."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = resolve_targets(model, lora)
    config = PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft annotates int, takes a float
        lora_dropout=0.0,
        target_modules=targets,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)  # peft draws A from the global generator
        # peft notes that GPT-2's Conv1D needs fan_in_fan_out and sets it itself
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        # peft 0.21 still asks transformers 5 the deprecated question; nothing for a user to do
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        peft_model = get_peft_model(model, config)
    peft_model.eval()
    return peft_model


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable adapter parameters by name, in a stable order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the adapter weights (what state and sampler checkpoints hold)."""
    return {name: p.detach().clone() for name, p in lora_parameters(model).items()}
