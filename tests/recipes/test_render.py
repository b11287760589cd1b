"""The chat renderer: loss weights on assistant turns only, truncation, prompts."""

from __future__ import annotations

import numpy as np
import pytest

from crucible.recipes import ChatRenderer, Conversation, Message, datum_weight
from crucible.recipes._render import (
    ROLE_COLON,
    TokenizerTemplate,
    fit_prompt,
    render_batch,
    template_for,
)
from crucible.training.backends.local import ByteTokenizer
from crucible.training.port import MissingChatTemplate

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

    assert template_for("auto", TOKENIZER) == TokenizerTemplate("<|end|>")
    assert template_for("auto", Plain()) is ROLE_COLON
    with pytest.raises(MissingChatTemplate, match="role_colon"):
        template_for("tokenizer", Plain())
    rendered = ChatRenderer(Plain(), ROLE_COLON).render(DIALOGUE, "last_assistant")
    assert bytes(rendered.tokens).decode().startswith("System: be brief\n\nUser: 2+2?")


HF_RENDERER = ChatRenderer(TOKENIZER, template_for("tokenizer", TOKENIZER))


@pytest.mark.parametrize("train_on", ["all_assistant", "last_assistant"])
def test_the_tokenizers_chat_template_renders_as_the_markers_do(train_on: str) -> None:
    # the byte tokenizer's chat template is the crucible markup: both paths must agree
    assert HF_RENDERER.render(DIALOGUE, train_on) == RENDERER.render(DIALOGUE, train_on)  # type: ignore[arg-type]
    history, _ = DIALOGUE.split_last_answer()
    assert HF_RENDERER.prompt(history) == RENDERER.prompt(history)
    assert HF_RENDERER.stop == ["<|end|>"]


def test_truncation_is_counted_and_nothing_left_to_train_on_is_skipped() -> None:
    renderer = ChatRenderer(TOKENIZER, template_for("tokenizer", TOKENIZER))
    short = Conversation((Message("user", "hi"), Message("assistant", "yo")))
    long = Conversation((Message("user", "x" * 80), Message("assistant", "yo")))
    batch = render_batch(renderer, [short, long, short], "all_assistant", 40)
    assert len(batch.data) == 2 and (batch.truncated, batch.skipped) == (1, 1)
    assert (renderer.counts.truncated, renderer.counts.skipped) == (1, 1)
    again = render_batch(renderer, [long, short], "all_assistant", 40)
    assert (again.truncated, again.skipped) == (1, 1)  # the batch's own counts
    assert (renderer.counts.truncated, renderer.counts.skipped) == (2, 2)


def test_a_batch_with_nothing_to_train_on_keeps_its_rows_and_counts_them() -> None:
    renderer = ChatRenderer(TOKENIZER, template_for("tokenizer", TOKENIZER))
    long = Conversation((Message("user", "x" * 80), Message("assistant", "yo")))
    batch = render_batch(renderer, [long, long], "all_assistant", 40)
    assert len(batch.data) == 2 and (batch.truncated, batch.skipped) == (2, 2)


def test_evaluation_prompts_drop_the_oldest_turns_to_fit() -> None:
    history, _ = DIALOGUE.split_last_answer()
    full = RENDERER.prompt(history)
    fitted = fit_prompt(RENDERER, history, full.length - 1)
    assert fitted is not None and fitted.length < full.length
    text = TOKENIZER.decode(fitted.to_ints())
    assert text.startswith("<|bos|><|system|>be brief<|end|>") and "2+2?" not in text
    assert fit_prompt(RENDERER, history, 5) is None
