from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crucible.training.backends.local import SPECIAL_TOKENS, ByteTokenizer

TOKENIZER = ByteTokenizer()


@given(st.text())
def test_any_text_round_trips(text: str) -> None:
    assert TOKENIZER.decode(TOKENIZER.encode(text, allow_special=False)) == text


@given(st.lists(st.sampled_from([*SPECIAL_TOKENS, "a", "é", " ", "<|", "|>"])))
def test_special_tokens_are_single_ids_and_round_trip(pieces: list[str]) -> None:
    text = "".join(pieces)
    ids = TOKENIZER.encode(text)
    assert TOKENIZER.decode(ids) == text
    assert all(0 <= i < TOKENIZER.vocab_size for i in ids)


def test_chat_markup_encodes_to_special_ids() -> None:
    ids = TOKENIZER.encode("<|user|>hi<|end|>")
    assert ids == [
        TOKENIZER.special_id("<|user|>"),
        ord("h"),
        ord("i"),
        TOKENIZER.special_id("<|end|>"),
    ]
    assert TOKENIZER.encode("<|user|>", allow_special=False) == list(b"<|user|>")
    assert TOKENIZER.vocab_size == 256 + len(SPECIAL_TOKENS)


def test_bad_ids_and_names_raise() -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TOKENIZER.decode([TOKENIZER.vocab_size])
    with pytest.raises(KeyError, match="not a special token"):
        TOKENIZER.special_id("<|nope|>")
    assert TOKENIZER.decode([0xC3]) == "\ufffd"  # a lone UTF-8 lead byte
