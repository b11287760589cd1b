from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from crucible.recipes._tasks import (
    TaskExample,
    addition_examples,
    default_task_split,
    is_test_example,
    reversal_examples,
    split_examples,
)


def test_addition_covers_every_two_digit_pair_with_correct_sums() -> None:
    examples = addition_examples()
    assert len(examples) == 90 * 90
    for example in examples[::97]:
        a, b = (
            int(n) for n in example.prompt.removeprefix("What is ").removesuffix("?").split(" + ")
        )
        assert example.answer == str(a + b)


def test_reversal_words_are_distinct_and_reversed() -> None:
    examples = reversal_examples(500, seed=3)
    words = [e.prompt.removeprefix("Reverse the word: ") for e in examples]
    assert len(set(words)) == 500
    assert all(
        e.answer == w[::-1] and 3 <= len(w) <= 7 for e, w in zip(examples, words, strict=True)
    )
    assert reversal_examples(500, seed=3) == examples
    assert reversal_examples(500, seed=4) != examples


def test_default_split_is_deterministic_disjoint_and_about_a_fifth() -> None:
    split = default_task_split()
    assert split == default_task_split()
    train = {(e.task, e.prompt) for e in split.train}
    test = {(e.task, e.prompt) for e in split.test}
    assert not train & test
    assert 0.17 < len(test) / (len(train) + len(test)) < 0.23
    assert {e.task for e in split.test} == {"addition", "reversal"}
    reshuffled = default_task_split(shuffle_seed=1)
    assert set(reshuffled.test) == set(split.test) and reshuffled.test != split.test


@given(st.permutations(addition_examples()[:200]))
@settings(max_examples=20)
def test_membership_of_the_test_split_does_not_depend_on_order(
    examples: list[TaskExample],
) -> None:
    split = split_examples(examples)
    assert all(is_test_example(e) for e in split.test)
    assert not any(is_test_example(e) for e in split.train)


def test_conversation_plain_text_and_grading() -> None:
    example = TaskExample("addition", "What is 12 + 30?", "42")
    assert example.conversation() == {
        "messages": [
            {"role": "user", "content": "What is 12 + 30?"},
            {"role": "assistant", "content": "42"},
        ]
    }
    assert example.plain_texts() == ("What is 12 + 30? 42", "12 + 30 = 42")
    assert example.is_correct(" 42\n") and not example.is_correct("43")
