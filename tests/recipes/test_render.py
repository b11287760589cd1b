"""The chat renderer: loss weights on assistant turns only, truncation, prompts."""

from __future__ import annotations

import numpy as np

from crucible.recipes import ChatRenderer, Conversation, Message, datum_weight
from crucible.recipes._render import ROLE_COLON, template_for
from crucible.training.backends.local import ByteTokenizer

TOKENIZER = ByteTokenizer()
RENDERER = ChatRenderer(TOKENIZER)
DIALOGUE = Conversation(
    (
        Message("system", "be brief"),
        Message("user", "2+2?"),
        Message("assistant", "4"),
        Message("user", "3+3?"),
        Message("assistant", "6"),
    )
)


def _trained_text(conversation: Conversation, train_on: str) -> str:
    rendered = RENDERER.render(conversation, train_on)  # type: ignore[arg-type]
    pairs = zip(rendered.tokens, rendered.weights, strict=True)
    return TOKENIZER.decode([token for token, weight in pairs if weight])


def test_only_assistant_turns_and_their_end_marker_are_trained_on() -> None:
    assert _trained_text(DIALOGUE, "all_assistant") == "4<|end|>6<|end|>"
    assert _trained_text(DIALOGUE, "last_assistant") == "6<|end|>"


def test_the_template_is_the_one_the_base_model_was_checked_with() -> None:
    rendered = RENDERER.render(DIALOGUE, "all_assistant")
    assert TOKENIZER.decode(list(rendered.tokens)) == (
        "<|bos|><|system|>be brief<|end|><|user|>2+2?<|end|><|assistant|>4<|end|>"
        "<|user|>3+3?<|end|><|assistant|>6<|end|>"
    )


def test_a_datum_predicts_the_next_token_with_shifted_weights() -> None:
    datum = RENDERER.datum(DIALOGUE, "all_assistant", max_length=64)
    rendered = RENDERER.render(DIALOGUE, "all_assistant")
    assert datum.model_input.to_ints() == list(rendered.tokens[:-1])
    targets = np.asarray(datum.loss_fn_inputs["target_tokens"].data)
    assert targets.tolist() == list(rendered.tokens[1:])
    assert datum_weight(datum) == sum(rendered.weights[1:]) == 4  # "4", "<|end|>", "6", "<|end|>"


def test_long_conversations_are_cut_to_max_length_inputs() -> None:
    datum = RENDERER.datum(DIALOGUE, "all_assistant", max_length=12)
    assert datum.model_input.length == 12
    assert len(datum.loss_fn_inputs["weights"].data) == 12


def test_the_prompt_is_the_rendering_up_to_the_assistant_header() -> None:
    history, answer = DIALOGUE.split_last_answer()
    prompt = RENDERER.prompt(history).to_ints()
    full = RENDERER.render(DIALOGUE, "all_assistant").tokens
    assert list(full[: len(prompt)]) == prompt
    assert TOKENIZER.decode(list(full[len(prompt) :])) == answer + "<|end|>"
    assert RENDERER.strip_answer(" 6<|end|><|user|>") == "6"


def test_auto_picks_plain_text_turns_for_tokenizers_without_special_tokens() -> None:
    class Plain:
        vocab_size = 256

        def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
            return list(text.encode())

        def decode(self, tokens: list[int]) -> str:
            return bytes(tokens).decode()

    assert template_for("auto", TOKENIZER) == RENDERER.template
    assert template_for("auto", Plain()) is ROLE_COLON
    rendered = ChatRenderer(Plain(), ROLE_COLON).render(DIALOGUE, "last_assistant")
    assert bytes(rendered.tokens).decode().startswith("System: be brief\n\nUser: 2+2?")
