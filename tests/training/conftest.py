from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from crucible.training.backends.local import LocalBackendConfig

from .training_kit import SMALL_LORA


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., LocalBackendConfig]:
    """Configs that share one checkpoint root per test; a small LoRA keeps tests fast."""

    def make(**overrides: object) -> LocalBackendConfig:
        settings: dict[str, object] = {
            # the byte-level base: these tests write datums with the byte tokenizer
            "base_model": "crucible/tiny-2l-128",
            "checkpoint_root": tmp_path / "checkpoints",
            "run_id": "test-run",
            "lora": SMALL_LORA,
            "seed": 0,
        }
        settings.update(overrides)
        return LocalBackendConfig(**settings)  # type: ignore[arg-type]

    return make
