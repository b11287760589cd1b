"""The legacy byte-level base ``crucible/tiny-2l-128`` as a Hugging Face GPT-2 model.

Its weights file (from the old hand-written transformer: learned positions, pre-norm blocks,
exact GELU, untied head) maps one to one onto GPT-2's modules, so the model runs on the one
transformers + peft path with the same function it always had. ``-random`` is the same shape
with seeded random weights (the control that shows LoRA needs a pretrained base).
"""

from __future__ import annotations

import importlib.resources
from typing import Any, Final

import torch

from crucible.training.port import InvalidBaseModel

WEIGHTS_FORMAT: Final = "crucible-base-weights/1"
_NAME: Final = "crucible/tiny-2l-128"
LEGACY_MODELS: Final[dict[str, str | None]] = {_NAME: "tiny-2l-128.pt", f"{_NAME}-random": None}


def legacy_config() -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=264,
        n_positions=64,
        n_embd=128,
        n_layer=2,
        n_head=4,
        n_inner=512,
        activation_function="gelu",  # exact GELU, as the hand-written model
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=False,
        bos_token_id=257,
        eos_token_id=258,
        pad_token_id=256,
    )


def _read_state(file_name: str) -> dict[str, torch.Tensor]:
    path = importlib.resources.files("crucible.training.backends.local") / "weights" / file_name
    if not path.is_file():
        raise InvalidBaseModel(f"base model {_NAME!r} has no weights file at {path}")
    with path.open("rb") as handle:
        payload = torch.load(handle, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise InvalidBaseModel(f"{path} is not a {WEIGHTS_FORMAT} file")
    state: dict[str, torch.Tensor] = payload["state_dict"]
    return state


def to_gpt2_state(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The hand-written model's tensors under GPT-2's names (Conv1D weights are [in, out])."""
    out = {
        "transformer.wte.weight": state["tok_emb.weight"],
        "transformer.wpe.weight": state["pos_emb.weight"],
        "transformer.ln_f.weight": state["ln_f.weight"],
        "transformer.ln_f.bias": state["ln_f.bias"],
        "lm_head.weight": state["lm_head.weight"],
    }
    for i in range(layers):
        old, new = f"blocks.{i}.", f"transformer.h.{i}."
        qkv = [state[f"{old}{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")]
        out[f"{new}attn.c_attn.weight"] = torch.cat(qkv, dim=0).t().contiguous()
        out[f"{new}attn.c_attn.bias"] = torch.cat(
            [state[f"{old}{p}.bias"] for p in ("q_proj", "k_proj", "v_proj")]
        )
        pairs = {
            "ln_1": "ln_attn",
            "ln_2": "ln_mlp",
            "attn.c_proj": "o_proj",
            "mlp.c_fc": "up_proj",
            "mlp.c_proj": "down_proj",
        }
        for gpt2, mine in pairs.items():
            weight = state[f"{old}{mine}.weight"]
            out[f"{new}{gpt2}.weight"] = (
                weight if gpt2.startswith("ln") else weight.t().contiguous()
            )
            out[f"{new}{gpt2}.bias"] = state[f"{old}{mine}.bias"]
    return out


def legacy_model(name: str) -> Any:
    from transformers import GPT2LMHeadModel

    config = legacy_config()
    file_name = LEGACY_MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    if file_name is not None:
        state = to_gpt2_state(_read_state(file_name), config.n_layer)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # GPT-2 keeps a causal-mask buffer per layer in some versions; weights must all match
        if unexpected or any(not key.endswith(".attn.bias") for key in missing):
            raise InvalidBaseModel(f"{name}: weights do not fit GPT-2 ({missing}, {unexpected})")
    return model
