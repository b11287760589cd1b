"""A small decoder-only transformer and LoRA adapters for it, in plain torch.

Projections are separate ``nn.Linear`` modules with stable names (``q_proj`` ... ``down_proj``)
so LoRA can target them by name, as peft does for real models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

import attrs
import torch
import torch.nn.functional as F
from torch import nn

#: Every module name LoRA can adapt, in each block.
LORA_TARGETS: Final[tuple[str, ...]] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "up_proj",
    "down_proj",
)


@attrs.frozen
class ModelConfig:
    """Shape of the transformer. ``context_length`` bounds prompt plus completion."""

    vocab_size: int
    context_length: int = 64
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int = 512

    def __attrs_post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")


@attrs.frozen
class LoraConfig:
    """LoRA adapters: ``rank``, ``alpha`` (scale = alpha / rank) and the modules adapted."""

    rank: int = 16
    alpha: float = 32.0
    target_modules: tuple[str, ...] = LORA_TARGETS

    def __attrs_post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        unknown = sorted(set(self.target_modules) - set(LORA_TARGETS))
        if unknown or not self.target_modules:
            raise ValueError(
                f"LoRA target_modules must be a non-empty subset of {LORA_TARGETS}, got "
                f"{self.target_modules}"
            )


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, h = config.d_model, config.n_heads
        self.n_heads = h
        self.ln_attn = nn.LayerNorm(d)
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)
        self.ln_mlp = nn.LayerNorm(d)
        self.up_proj = nn.Linear(d, config.d_mlp)
        self.down_proj = nn.Linear(config.d_mlp, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        h = self.ln_attn(x)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.n_heads, width // self.n_heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            heads(self.q_proj(h)), heads(self.k_proj(h)), heads(self.v_proj(h)), is_causal=True
        )
        x = x + self.o_proj(attended.transpose(1, 2).reshape(batch, length, width))
        mlp_out: torch.Tensor = self.down_proj(F.gelu(self.up_proj(self.ln_mlp(x))))
        return x + mlp_out


class TinyTransformer(nn.Module):
    """GPT-style: learned positions, pre-norm blocks, untied output head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.context_length, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, length, vocab]`` for ``tokens`` ``[batch, length]``."""
        length = tokens.shape[1]
        if length > self.config.context_length:
            raise ValueError(
                f"sequence of {length} tokens exceeds the context length "
                f"{self.config.context_length}"
            )
        positions = torch.arange(length, device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.lm_head(self.ln_f(x))
        return logits


def init_weights(model: TinyTransformer, generator: torch.Generator) -> None:
    """GPT-2 style initialisation from an explicit generator (deterministic under a seed)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * x Aᵀ Bᵀ`` with the base frozen; B starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self.scale = alpha / rank
        bound = 1.0 / math.sqrt(base.in_features)  # the kaiming-uniform bound peft uses for A
        self.lora_a = nn.Parameter(
            (torch.rand(rank, base.in_features, generator=generator) * 2 - 1) * bound
        )
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(x, self.lora_a), self.lora_b)
        out: torch.Tensor = self.base(x) + update * self.scale
        return out


def add_lora(model: TinyTransformer, lora: LoraConfig, generator: torch.Generator) -> None:
    """Freeze every base parameter and wrap the target projections in LoRA adapters."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for block in model.blocks:
        for target in lora.target_modules:
            base = getattr(block, target)
            setattr(block, target, LoRALinear(base, lora.rank, lora.alpha, generator))


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable adapter parameters by name, in a stable order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the adapter weights (what state and sampler checkpoints hold)."""
    return {name: p.detach().clone() for name, p in lora_parameters(model).items()}


def base_state_dict(model: TinyTransformer) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def count_parameters(parameters: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() for p in parameters)
