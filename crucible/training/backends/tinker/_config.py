"""What a Tinker backend trains, and where."""

from __future__ import annotations

import attrs


@attrs.frozen
class TinkerBackendConfig:
    """What to train on Tinker, and where.

    ``base_url`` None uses ``TINKER_BASE_URL``, then the Tinker service; ``api_key`` None uses
    ``TINKER_API_KEY``, then the SDK's stored credentials. ``seed`` fixes the LoRA
    initialisation (None lets the service pick one).
    """

    base_model: str
    lora_rank: int = 32
    seed: int | None = None
    train_mlp: bool = True
    train_attn: bool = True
    train_unembed: bool = True
    base_url: str | None = None
    api_key: str | None = None
    user_metadata: dict[str, str] | None = None
