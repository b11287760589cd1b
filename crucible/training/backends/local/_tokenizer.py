"""Byte-level tokenizer with chat special tokens: ids 0-255 are bytes, specials follow."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import attrs

SPECIAL_TOKENS: Final[tuple[str, ...]] = (
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|sep|>",
)
_BYTE_COUNT: Final = 256
_SPECIAL_PATTERN: Final = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))


@attrs.frozen
class ByteTokenizer:
    """Text is UTF-8 bytes, one token each; special token strings become single ids.

    Byte-level means any text round-trips and nothing has to be downloaded.
    """

    @property
    def vocab_size(self) -> int:
        return _BYTE_COUNT + len(SPECIAL_TOKENS)

    def special_id(self, token: str) -> int:
        """The id of a special token such as ``"<|end|>"``."""
        try:
            return _BYTE_COUNT + SPECIAL_TOKENS.index(token)
        except ValueError:
            raise KeyError(
                f"{token!r} is not a special token; known: {', '.join(SPECIAL_TOKENS)}"
            ) from None

    @property
    def pad_token_id(self) -> int:
        return self.special_id("<|pad|>")

    @property
    def bos_token_id(self) -> int:
        return self.special_id("<|bos|>")

    @property
    def eos_token_id(self) -> int:
        return self.special_id("<|eos|>")

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Token ids of ``text``; with ``allow_special``, ``"<|user|>"`` etc. become one id."""
        if not allow_special:
            return list(text.encode("utf-8"))
        ids: list[int] = []
        position = 0
        for match in _SPECIAL_PATTERN.finditer(text):
            ids.extend(text[position : match.start()].encode("utf-8"))
            ids.append(self.special_id(match.group()))
            position = match.end()
        ids.extend(text[position:].encode("utf-8"))
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``; special ids are written as their strings, bad UTF-8 as U+FFFD."""
        parts: list[str] = []
        pending = bytearray()
        for token in tokens:
            if 0 <= token < _BYTE_COUNT:
                pending.append(token)
                continue
            if not _BYTE_COUNT <= token < self.vocab_size:
                raise ValueError(
                    f"token id {token} is outside the vocabulary (0..{self.vocab_size - 1})"
                )
            parts.append(pending.decode("utf-8", errors="replace"))
            pending.clear()
            parts.append(SPECIAL_TOKENS[token - _BYTE_COUNT])
        parts.append(pending.decode("utf-8", errors="replace"))
        return "".join(parts)
