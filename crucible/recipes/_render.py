"""Rendering conversations into training data: a chat template, loss weights on assistant
turns only, truncation, and ``tinker.types.Datum`` construction.

The template is the one the shipped local base model was checked with::

    <|bos|><|user|>What is 12 + 30?<|end|><|assistant|>42<|end|>

Each message is ``<|role|>content<|end|>``. The loss weight is 1 on the tokens the model should
learn to produce (an assistant message's content and its closing ``<|end|>``) and 0 elsewhere,
so the model is never trained to write the user's side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import attrs
import numpy as np
from tinker import types

from crucible.recipes._data import Conversation, Message
from crucible.training import Tokenizer

TrainOn = Literal["all_assistant", "last_assistant"]


@attrs.frozen
class ChatTemplate:
    """The marker strings of a chat template (special tokens of the local tokenizer)."""

    bos: str = "<|bos|>"
    roles: tuple[tuple[str, str], ...] = (
        ("system", "<|system|>"),
        ("user", "<|user|>"),
        ("assistant", "<|assistant|>"),
    )
    end: str = "<|end|>"

    def header(self, role: str) -> str:
        return dict(self.roles)[role]


#: Plain text turns for tokenizers without crucible's special tokens (real models on Tinker).
ROLE_COLON = ChatTemplate(
    bos="",
    roles=(("system", "System: "), ("user", "User: "), ("assistant", "Assistant: ")),
    end="\n\n",
)
CRUCIBLE_CHAT = ChatTemplate()


def template_for(name: str, tokenizer: Tokenizer) -> ChatTemplate:
    """``crucible`` / ``role_colon`` by name; ``auto`` picks crucible's special-token template
    when the tokenizer encodes ``<|end|>`` as one token, role_colon otherwise."""
    if name == "crucible":
        return CRUCIBLE_CHAT
    if name == "role_colon":
        return ROLE_COLON
    if name != "auto":
        raise ValueError(f"unknown chat template {name!r}; known: auto, crucible, role_colon")
    return CRUCIBLE_CHAT if len(tokenizer.encode(CRUCIBLE_CHAT.end)) == 1 else ROLE_COLON


@attrs.frozen
class RenderedExample:
    tokens: tuple[int, ...]
    weights: tuple[float, ...]  # weights[i]: whether token i is trained on (0 or 1)

    @property
    def trained_tokens(self) -> int:
        return int(sum(self.weights[1:]))


@attrs.frozen
class ChatRenderer:
    tokenizer: Tokenizer
    template: ChatTemplate = ChatTemplate()

    def render(self, conversation: Conversation, train_on: TrainOn) -> RenderedExample:
        last = max(
            (i for i, m in enumerate(conversation.messages) if m.role == "assistant"), default=-1
        )
        tokens = self.tokenizer.encode(self.template.bos)
        weights = [0.0] * len(tokens)
        for index, message in enumerate(conversation.messages):
            header = self.tokenizer.encode(self.template.header(message.role))
            body = self.tokenizer.encode(message.content + self.template.end)
            trained = message.role == "assistant" and (train_on == "all_assistant" or index == last)
            tokens += header + body
            weights += [0.0] * len(header) + [1.0 if trained else 0.0] * len(body)
        return RenderedExample(tuple(tokens), tuple(weights))

    def prompt(self, messages: Sequence[Message]) -> types.ModelInput:
        """The tokens that ask the model for the next assistant turn."""
        text = self.template.bos + "".join(
            self.template.header(m.role) + m.content + self.template.end for m in messages
        )
        return types.ModelInput.from_ints(
            self.tokenizer.encode(text + self.template.header("assistant"))
        )

    def strip_answer(self, text: str) -> str:
        """A sampled assistant turn without its end marker."""
        return text.split(self.template.end, 1)[0].strip()

    @property
    def stop(self) -> list[str]:
        """Stop sequences for sampling one assistant turn."""
        return [self.template.end]

    def datum(self, conversation: Conversation, train_on: TrainOn, max_length: int) -> types.Datum:
        """A next-token Datum: inputs are tokens[:-1], targets tokens[1:], at most
        ``max_length`` inputs (longer conversations are cut at the end)."""
        rendered = self.render(conversation, train_on)
        tokens = rendered.tokens[: max_length + 1]
        weights = rendered.weights[: max_length + 1]
        return types.Datum(
            model_input=types.ModelInput.from_ints(list(tokens[:-1])),
            loss_fn_inputs={
                "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], np.int64)),
                "weights": types.TensorData.from_numpy(np.asarray(weights[1:], np.float32)),
            },
        )


def datum_weight(datum: types.Datum) -> float:
    """How many target tokens the datum trains on."""
    return float(np.asarray(datum.loss_fn_inputs["weights"].data, np.float32).sum())
