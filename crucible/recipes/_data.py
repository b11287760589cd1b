"""Conversation datasets: the tinker-cookbook JSONL format, and the default generated tasks.

One conversation a line: ``{"messages": [{"role": "system"|"user"|"assistant", "content":
"..."}]}``. A line that is not such an object raises ``DatasetError`` naming the file and the
line number; with ``skip_bad_lines`` it is skipped and counted instead.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import anyio.to_thread
import attrs
import msgspec

from crucible.recipes._tasks import TaskExample, TaskName, default_task_split

Role = Literal["system", "user", "assistant"]


class DatasetError(ValueError):
    """A dataset file cannot be used; the message names the file and, if any, the line."""


class Message(msgspec.Struct, frozen=True):
    role: Role
    content: str


class Conversation(msgspec.Struct, frozen=True):
    """``messages`` in order; ``task`` optionally groups examples for per-task accuracy."""

    messages: tuple[Message, ...]
    task: str | None = None

    def split_last_answer(self) -> tuple[tuple[Message, ...], str]:
        """The messages before the last assistant turn, and that turn's text (the answer an
        exact-match evaluation expects)."""
        for index in range(len(self.messages) - 1, -1, -1):
            if self.messages[index].role == "assistant":
                return self.messages[:index], self.messages[index].content
        raise DatasetError("the conversation has no assistant message")


@attrs.frozen
class BadLine:
    line: int
    reason: str


@attrs.frozen
class LoadedConversations:
    path: Path
    conversations: tuple[Conversation, ...]
    skipped: tuple[BadLine, ...] = ()


_decoder = msgspec.json.Decoder(Conversation)


def _check(conversation: Conversation) -> None:
    if not conversation.messages:
        raise DatasetError("messages is empty")
    if not any(message.role == "assistant" for message in conversation.messages):
        raise DatasetError("no assistant message (nothing to learn from)")


def read_conversations(path: str | Path, *, skip_bad_lines: bool = False) -> LoadedConversations:
    """Read a conversations JSONL file; blank lines are ignored."""
    file = Path(path)
    try:
        lines = file.read_bytes().splitlines()
    except OSError as error:
        raise DatasetError(f"cannot read dataset {file}: {error.strerror}") from error
    conversations: list[Conversation] = []
    skipped: list[BadLine] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed = _parse(line)
        if isinstance(parsed, str):
            if not skip_bad_lines:
                raise DatasetError(f"{file}:{number}: {parsed} (or pass skip_bad_lines=true)")
            skipped.append(BadLine(number, parsed))
            continue
        conversations.append(parsed)
    if not conversations:
        raise DatasetError(f"{file} holds no usable conversation")
    return LoadedConversations(file, tuple(conversations), tuple(skipped))


_EXPECTED = '{"messages": [{"role": "user"|"assistant"|"system", "content": "..."}]}'


def _parse(line: bytes) -> Conversation | str:
    """The line's conversation, or what is wrong with it in words."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"bytes that are not UTF-8 text (at byte {error.start + 1})"
    try:
        conversation = _decoder.decode(line)
        _check(conversation)
    except msgspec.ValidationError as error:  # JSON, but not a conversation
        return f"not a conversation ({error}); expected {_EXPECTED}"
    except msgspec.DecodeError as error:
        return f"not valid JSON ({error})"
    except DatasetError as error:
        return f"not a conversation ({error}); expected {_EXPECTED}"
    return conversation


@attrs.frozen
class DatasetSplits:
    train: tuple[Conversation, ...]
    test: tuple[Conversation, ...]
    skipped_lines: int = 0
    source: str = ""


@runtime_checkable
class DatasetStore(Protocol):
    """The dataset port: where a recipe's train and test conversations come from."""

    async def load(self) -> DatasetSplits: ...


@attrs.frozen
class TaskDatasetStore:
    """The default dataset: generated 2-digit addition and word-reversal dialogues.

    The split is the one the shipped base model was pretrained on (``split_seed=0``), so test
    problems were never seen in pretraining.
    """

    tasks: tuple[TaskName, ...] = ("addition", "reversal")
    shuffle_seed: int = 0

    def load_sync(self) -> DatasetSplits:
        split = default_task_split(self.tasks, split_seed=0, shuffle_seed=self.shuffle_seed)

        def conversations(examples: Sequence[TaskExample]) -> tuple[Conversation, ...]:
            return tuple(
                Conversation(
                    (Message("user", e.prompt), Message("assistant", e.answer)), task=e.task
                )
                for e in examples
            )

        return DatasetSplits(
            conversations(split.train),
            conversations(split.test),
            source=f"generated tasks: {', '.join(self.tasks)}",
        )

    async def load(self) -> DatasetSplits:
        return await anyio.to_thread.run_sync(self.load_sync)


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


@attrs.frozen
class JsonlDatasetStore:
    """Conversations from JSONL files; without a test file, a seeded share of the train file
    is held out."""

    train_path: Path = attrs.field(converter=Path)
    test_path: Path | None = attrs.field(default=None, converter=_optional_path)
    test_fraction: float = 0.1
    skip_bad_lines: bool = False
    seed: int = 0

    def load_sync(self) -> DatasetSplits:
        train = read_conversations(self.train_path, skip_bad_lines=self.skip_bad_lines)
        skipped = len(train.skipped)
        if self.test_path is not None:
            test = read_conversations(self.test_path, skip_bad_lines=self.skip_bad_lines)
            skipped += len(test.skipped)
            return DatasetSplits(
                train.conversations, test.conversations, skipped, str(self.train_path)
            )
        order = list(train.conversations)
        random.Random(self.seed).shuffle(order)
        held_out = round(len(order) * self.test_fraction)
        if held_out == 0 and self.test_fraction > 0 and len(order) > 1:
            held_out = 1
        return DatasetSplits(
            tuple(order[held_out:]), tuple(order[:held_out]), skipped, str(self.train_path)
        )

    async def load(self) -> DatasetSplits:
        return await anyio.to_thread.run_sync(self.load_sync)
