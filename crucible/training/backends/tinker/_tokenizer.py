"""The Tokenizer port over the Hugging Face tokenizer the SDK loads for a Tinker base model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class HuggingFaceTokenizer:
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(tokens)))
