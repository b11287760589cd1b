"""Tokenizers of the local backend: any Hugging Face tokenizer behind crucible's Tokenizer
protocol, and the byte-level tokenizer of the legacy ``crucible/tiny-2l-128`` base built with
the ``tokenizers`` library (ids 0-255 are bytes, the chat special tokens follow)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Final

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
#: The legacy base model's chat markup as a Jinja chat template (what apply_chat_template uses).
BYTE_CHAT_TEMPLATE: Final = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>"
    "{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


class HFTokenizer:
    """A Hugging Face tokenizer with crucible's ``encode(text, allow_special=)``.

    Special-token strings in the text become their ids (``allow_special``); no BOS or EOS is
    added: renderers write them explicitly. Every other attribute (``apply_chat_template``,
    ``eos_token_id``, ``chat_template`` ...) is the wrapped tokenizer's, so code written for a
    Hugging Face tokenizer (tinker-cookbook's renderers) works on this one too.
    """

    def __init__(self, hf: Any) -> None:
        self.hf = hf

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hf, name)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        ids: list[int] = self.hf.encode(
            text, add_special_tokens=False, split_special_tokens=not allow_special
        )
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        text: str = self.hf.decode(list(tokens), skip_special_tokens=False)
        return text

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Tokens that end a sequence: the tokenizer's EOS (sampling always stops there)."""
        eos = self.hf.eos_token_id
        return () if eos is None else (int(eos),)


@functools.cache
def _byte_level_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # ByteLevel maps each byte to one printable character; a BPE with those 256 characters
    # and no merges is then exactly "one token per byte", with the byte's value as its id.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_chars = _bytes_to_unicode()
    assert set(byte_chars.values()) == set(alphabet)
    vocab = {byte_chars[byte]: byte for byte in range(_BYTE_COUNT)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        chat_template=BYTE_CHAT_TEMPLATE,
        model_max_length=64,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel uses)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping: dict[int, str] = {}
    extra = 0
    for byte in range(_BYTE_COUNT):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(_BYTE_COUNT + extra)
            extra += 1
    return mapping


class ByteTokenizer(HFTokenizer):
    """The byte-level tokenizer: any text round-trips, special token strings are single ids."""

    def __init__(self) -> None:
        super().__init__(_byte_level_tokenizer())

    def special_id(self, token: str) -> int:
        """The id of a special token such as ``"<|end|>"``."""
        if token not in SPECIAL_TOKENS:
            raise KeyError(f"{token!r} is not a special token; known: {', '.join(SPECIAL_TOKENS)}")
        return _BYTE_COUNT + SPECIAL_TOKENS.index(token)

    @property
    def pad_token_id(self) -> int:
        return self.special_id("<|pad|>")

    @property
    def bos_token_id(self) -> int:
        return self.special_id("<|bos|>")

    @property
    def eos_token_id(self) -> int:
        return self.special_id("<|eos|>")

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return (self.eos_token_id,)

    def decode(self, tokens: Sequence[int]) -> str:
        bad = [t for t in tokens if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(
                f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})"
            )
        return super().decode(tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash(ByteTokenizer)
