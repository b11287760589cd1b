"""Rendering conversations into training data: a chat template, loss weights on assistant
turns only, truncation, and ``tinker.types.Datum`` construction.

Any Hugging Face model renders through its tokenizer's own chat template
(``apply_chat_template``, the ``tokenizer`` template); the marker templates below remain for
tokenizers without one.

The template is the one the shipped local base model was checked with::

    <|bos|><|user|>What is 12 + 30?<|end|><|assistant|>42<|end|>

Each message is ``<|role|>content<|end|>``. The loss weight is 1 on the tokens the model should
learn to produce (an assistant message's content and its closing ``<|end|>``) and 0 elsewhere,
so the model is never trained to write the user's side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import attrs
import numpy as np
from tinker import types

from crucible.recipes._data import Conversation, Message
from crucible.training import Tokenizer
from crucible.training.port import MissingChatTemplate

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


@attrs.frozen
class TokenizerTemplate:
    """The tokenizer's own chat template (``apply_chat_template``); ``end`` is the text that
    closes an assistant turn (found by rendering a probe conversation)."""

    end: str


_PROBE = "\x1fPROBE\x1f"


def _hf(tokenizer: Tokenizer) -> Any:
    return getattr(tokenizer, "hf", tokenizer)


def _chat(tokenizer: Tokenizer, messages: Sequence[dict[str, str]], generation: bool) -> str:
    text: str = _hf(tokenizer).apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation
    )
    return text


def tokenizer_template(tokenizer: Tokenizer) -> TokenizerTemplate:
    if not getattr(_hf(tokenizer), "chat_template", None):
        raise MissingChatTemplate(
            "the tokenizer has no chat template; set chat_template=role_colon (plain "
            "'User: ... Assistant: ...' turns) or chat_template=crucible (<|user|> markers)"
        )
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    text = _chat(tokenizer, messages, False)
    end = text.split(_PROBE, 1)[1].strip() if _PROBE in text else ""
    eos = getattr(_hf(tokenizer), "eos_token", None)
    return TokenizerTemplate(end or (eos if isinstance(eos, str) else ""))


AnyTemplate = ChatTemplate | TokenizerTemplate
TEMPLATE_NAMES = ("auto", "tokenizer", "crucible", "role_colon")


def template_for(name: str, tokenizer: Tokenizer) -> AnyTemplate:
    """``tokenizer`` (its own chat template), ``crucible`` or ``role_colon`` by name; ``auto``
    takes the tokenizer's chat template when it has one, else crucible's special-token markers
    when the tokenizer encodes ``<|end|>`` as one token, else role_colon."""
    if name == "tokenizer":
        return tokenizer_template(tokenizer)
    if name == "crucible":
        return CRUCIBLE_CHAT
    if name == "role_colon":
        return ROLE_COLON
    if name != "auto":
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATE_NAMES)}")
    if getattr(_hf(tokenizer), "chat_template", None):
        return tokenizer_template(tokenizer)
    return CRUCIBLE_CHAT if len(tokenizer.encode(CRUCIBLE_CHAT.end)) == 1 else ROLE_COLON


@attrs.define
class RenderCounts:
    """Conversations cut at max_length, and those skipped because the cut left nothing to
    train on (reported, never dropped silently)."""

    truncated: int = 0
    skipped: int = 0


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
    template: AnyTemplate = ChatTemplate()
    counts: RenderCounts = attrs.field(factory=RenderCounts, eq=False)

    def render(self, conversation: Conversation, train_on: TrainOn) -> RenderedExample:
        if isinstance(self.template, TokenizerTemplate):
            return self._render_with_tokenizer(conversation, train_on)
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

    def _render_with_tokenizer(
        self, conversation: Conversation, train_on: TrainOn
    ) -> RenderedExample:
        """The whole conversation through apply_chat_template; the characters each trained
        assistant turn adds (its content and end marker) are found by rendering the prefixes,
        and the tokens starting inside them get weight 1."""
        messages = [{"role": m.role, "content": m.content} for m in conversation.messages]
        text = _chat(self.tokenizer, messages, False)
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        spans: list[tuple[int, int]] = []
        for index in assistant if train_on == "all_assistant" else assistant[-1:]:
            before = _chat(self.tokenizer, messages[:index], True) if index else ""
            upto = _chat(self.tokenizer, messages[: index + 1], False)
            if not (text.startswith(upto) and upto.startswith(before)):
                raise ValueError(
                    "the tokenizer's chat template does not render a conversation's turns as "
                    "prefixes of it (it rewrites earlier turns); use chat_template=role_colon"
                )
            spans.append((len(before), len(upto)))
        encoded = _hf(self.tokenizer)(text, add_special_tokens=False, return_offsets_mapping=True)
        tokens = list(encoded["input_ids"])
        weights = [
            1.0 if any(lo <= start < hi for lo, hi in spans) else 0.0
            for start, _end in encoded["offset_mapping"]
        ]
        return RenderedExample(tuple(tokens), tuple(weights))

    def prompt(self, messages: Sequence[Message]) -> types.ModelInput:
        """The tokens that ask the model for the next assistant turn."""
        if isinstance(self.template, TokenizerTemplate):
            dicts = [{"role": m.role, "content": m.content} for m in messages]
            text = _chat(self.tokenizer, dicts, True)
            return types.ModelInput.from_ints(self.tokenizer.encode(text))
        text = self.template.bos + "".join(
            self.template.header(m.role) + m.content + self.template.end for m in messages
        )
        return types.ModelInput.from_ints(
            self.tokenizer.encode(text + self.template.header("assistant"))
        )

    def strip_answer(self, text: str) -> str:
        """A sampled assistant turn without its end marker."""
        end = self.template.end
        return (text.split(end, 1)[0] if end else text).strip()

    @property
    def stop(self) -> list[str]:
        """Stop sequences for sampling one assistant turn (end-of-sequence always stops too)."""
        return [self.template.end] if self.template.end else []

    def datum(self, conversation: Conversation, train_on: TrainOn, max_length: int) -> types.Datum:
        """A next-token Datum: inputs are tokens[:-1], targets tokens[1:], at most
        ``max_length`` inputs (longer conversations are cut at the end, and counted)."""
        rendered = self.render(conversation, train_on)
        if len(rendered.tokens) > max_length + 1:
            self.counts.truncated += 1
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


def fit_prompt(
    renderer: ChatRenderer, history: Sequence[Message], budget: int
) -> types.ModelInput | None:
    """The prompt for ``history`` in at most ``budget`` tokens: the oldest turns after any
    system message are dropped until it fits; None when even the last turn alone does not."""
    system = [m for m in history[:1] if m.role == "system"]
    turns = list(history[len(system) :])
    while turns:
        prompt = renderer.prompt([*system, *turns])
        if prompt.length <= budget:
            return prompt
        turns.pop(0)
    return None


@attrs.frozen
class RenderedBatch:
    """One training batch, with how many of its conversations were cut at max_length and how
    many were left out because the cut left nothing to train on."""

    data: list[types.Datum]
    truncated: int
    skipped: int


def render_batch(
    renderer: ChatRenderer,
    conversations: Sequence[Conversation],
    train_on: TrainOn,
    max_length: int,
) -> RenderedBatch:
    """Datums for ``conversations``, without those that truncation left with nothing to train
    on, and this batch's counts (also added to ``renderer.counts``). A batch whose every
    conversation would be left out keeps them all: an empty batch cannot be trained, and
    zero-weight rows change nothing."""
    truncated_before = renderer.counts.truncated
    every = [renderer.datum(c, train_on, max_length) for c in conversations]
    trainable = [datum for datum in every if datum_weight(datum) > 0]
    skipped = len(every) - len(trainable)
    renderer.counts.skipped += skipped
    return RenderedBatch(trainable or every, renderer.counts.truncated - truncated_before, skipped)
