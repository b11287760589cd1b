"""The default tasks: 2-digit addition and word reversal, generated (nothing is downloaded).

Both the default fine-tuning dataset (as conversations) and the plain-text corpus that
pretrains the shipped base model (``scripts/pretrain_base.py``) come from here, so the two can
never drift apart. Everything is deterministic under a seed, and the train/test split is by a
hash of each problem, so a held-out problem is never seen in pretraining or fine-tuning.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

TaskName = Literal["addition", "reversal"]
TASK_NAMES: tuple[TaskName, ...] = ("addition", "reversal")

#: Share of problems held out for the test split (by problem hash, not by position).
DEFAULT_TEST_FRACTION = 0.2


@attrs.frozen
class TaskExample:
    """One problem: the user's prompt and the exact answer the assistant should give."""

    task: TaskName
    prompt: str
    answer: str

    def conversation(self) -> dict[str, list[dict[str, str]]]:
        """The tinker-cookbook conversation form: ``{"messages": [user, assistant]}``."""
        return {
            "messages": [
                {"role": "user", "content": self.prompt},
                {"role": "assistant", "content": self.answer},
            ]
        }

    def plain_texts(self) -> tuple[str, ...]:
        """Plain-text forms of this problem, for pretraining (no chat template)."""
        return (f"{self.prompt} {self.answer}", *_extra_surface_forms(self))

    def is_correct(self, completion: str) -> bool:
        """Exact match, ignoring surrounding whitespace."""
        return completion.strip() == self.answer


@attrs.frozen
class TaskSplit:
    train: tuple[TaskExample, ...]
    test: tuple[TaskExample, ...]


def addition_examples() -> list[TaskExample]:
    """Every sum of two 2-digit numbers (10..99): 8100 problems."""
    return [
        TaskExample("addition", f"What is {a} + {b}?", str(a + b))
        for a in range(10, 100)
        for b in range(10, 100)
    ]


def reversal_examples(count: int = 4000, *, seed: int = 0) -> list[TaskExample]:
    """``count`` distinct made-up lowercase words (3 to 7 letters) to spell backwards.

    Made-up words keep the task about the algorithm rather than memorised English words.
    """
    rng = random.Random(seed)
    words: dict[str, None] = {}  # an ordered set: the order is part of determinism
    while len(words) < count:
        length = rng.randint(3, 7)
        words["".join(rng.choice(string.ascii_lowercase) for _ in range(length))] = None
    return [TaskExample("reversal", f"Reverse the word: {word}", word[::-1]) for word in words]


def is_test_example(
    example: TaskExample, *, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0
) -> bool:
    """Whether the problem is held out: decided by a hash, so it does not depend on order."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    digest = hashlib.blake2b(
        f"{seed}\x00{example.task}\x00{example.prompt}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") / 2**64 < test_fraction


def split_examples(
    examples: Iterable[TaskExample],
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> TaskSplit:
    """Split into train and test by problem hash (stable under reordering and additions)."""
    train: list[TaskExample] = []
    test: list[TaskExample] = []
    for example in examples:
        held_out = is_test_example(example, test_fraction=test_fraction, seed=seed)
        (test if held_out else train).append(example)
    return TaskSplit(train=tuple(train), test=tuple(test))


def default_task_split(
    tasks: Sequence[TaskName] = TASK_NAMES,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    split_seed: int = 0,
    shuffle_seed: int = 0,
) -> TaskSplit:
    """The default dataset: the chosen tasks mixed, split, and each side shuffled.

    ``split_seed`` picks the made-up words and the held-out problems. The shipped base model
    was pretrained on the train side of ``split_seed=0``; keep it at 0 when evaluating that
    model, or test problems may have been seen in pretraining. ``shuffle_seed`` only orders.
    """
    examples: list[TaskExample] = []
    for task in tasks:
        if task == "addition":
            examples.extend(addition_examples())
        elif task == "reversal":
            examples.extend(reversal_examples(seed=split_seed))
        else:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASK_NAMES)}")
    split = split_examples(examples, test_fraction=test_fraction, seed=split_seed)
    rng = random.Random(shuffle_seed)
    train, test = list(split.train), list(split.test)
    rng.shuffle(train)
    rng.shuffle(test)
    return TaskSplit(train=tuple(train), test=tuple(test))


def _extra_surface_forms(example: TaskExample) -> tuple[str, ...]:
    if example.task == "addition":
        expression = example.prompt.removeprefix("What is ").removesuffix("?")
        return (f"{expression} = {example.answer}",)
    word = example.prompt.removeprefix("Reverse the word: ")
    return (f"{word} backwards is {example.answer}",)
