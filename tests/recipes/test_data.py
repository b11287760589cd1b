"""Conversations JSONL: bad lines are named by file and line, or skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from crucible.recipes import (
    Conversation,
    DatasetError,
    JsonlDatasetStore,
    Message,
    TaskDatasetStore,
    read_conversations,
)
from crucible.run import main

from .run_kit import tiny_overrides

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
# Each bad line, and the words that name its problem.
BAD_LINES_AND_PROBLEMS = [
    ("not json at all", "not valid JSON"),
    ('{"messages": [', "not valid JSON"),
    (json.dumps({"messages": [{"role": "robot", "content": "beep"}]}), "not a conversation"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "no assistant message"),
    (json.dumps({"messages": []}), "messages is empty"),
    (json.dumps({"text": "no messages key"}), "missing required field `messages`"),
    (json.dumps({"messages": [{"role": "assistant", "content": 3}]}), "not a conversation"),
]
BAD_LINES = [line for line, _ in BAD_LINES_AND_PROBLEMS]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(("bad", "problem"), BAD_LINES_AND_PROBLEMS)
def test_a_bad_line_is_named_by_file_and_line_number(
    tmp_path: Path, bad: str, problem: str
) -> None:
    path = _write(tmp_path / "data.jsonl", [json.dumps(GOOD), "", bad, json.dumps(GOOD)])
    with pytest.raises(DatasetError) as caught:
        read_conversations(path)
    assert str(caught.value).startswith(f"{path}:3: ")
    assert problem in str(caught.value)
    assert "skip_bad_lines" in str(caught.value)


def test_bytes_that_are_not_utf8_are_named_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    good = json.dumps(GOOD).encode()
    path.write_bytes(good + b"\n" + good.replace(b"hi", b"h\xffi") + b"\n")
    with pytest.raises(DatasetError, match=r":2: bytes that are not UTF-8 text \(at byte 45\)"):
        read_conversations(path)
    assert len(read_conversations(path, skip_bad_lines=True).skipped) == 1


def test_skip_bad_lines_skips_and_counts_them(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.jsonl", [json.dumps(GOOD), *BAD_LINES, json.dumps(GOOD)])
    loaded = read_conversations(path, skip_bad_lines=True)
    assert len(loaded.conversations) == 2
    assert [bad.line for bad in loaded.skipped] == list(range(2, 2 + len(BAD_LINES)))


def test_files_without_usable_conversations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read dataset"):
        read_conversations(tmp_path / "missing.jsonl")
    empty = _write(tmp_path / "empty.jsonl", BAD_LINES[:1])
    with pytest.raises(DatasetError, match="holds no usable conversation"):
        read_conversations(empty, skip_bad_lines=True)


def test_without_a_test_file_a_seeded_share_is_held_out(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.jsonl", [json.dumps(GOOD)] * 20)
    splits = JsonlDatasetStore(path, test_fraction=0.25, seed=3).load_sync()
    assert (len(splits.train), len(splits.test)) == (15, 5)


def test_the_default_dataset_is_generated_with_a_held_out_split() -> None:
    splits = anyio.run(TaskDatasetStore(tasks=("addition",)).load)
    assert len(splits.train) + len(splits.test) == 8100
    assert {c.task for c in splits.test} == {"addition"}
    train_prompts = {c.messages[0].content for c in splits.train}
    assert not train_prompts & {c.messages[0].content for c in splits.test}


def test_the_last_answer_is_what_exact_match_expects() -> None:
    conversation = Conversation(
        (
            Message("user", "a"),
            Message("assistant", "b"),
            Message("user", "c"),
            Message("assistant", "d"),
        )
    )
    history, answer = conversation.split_last_answer()
    assert answer == "d" and len(history) == 3


def test_the_cli_names_the_bad_line_and_skip_bad_lines_counts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = tiny_overrides(tmp_path, tmp_path / "run", max_steps=2)
    train = tmp_path / "train.jsonl"
    lines = train.read_text().splitlines()
    _write(train, [*lines[:4], "{oops", *lines[4:]])
    assert main([*overrides, "--quiet"]) == 2
    assert f"{train}:5: not valid JSON" in capsys.readouterr().err

    overrides = tiny_overrides(tmp_path, tmp_path / "run2", max_steps=2, skip_bad_lines=True)
    _write(train, [*lines[:4], "{oops", *lines[4:]])
    assert main([*overrides, "--quiet"]) == 0
    assert json.loads((tmp_path / "run2" / "summary.json").read_text())["skipped_lines"] == 1
    assert "dataset: 1 bad lines skipped" in capsys.readouterr().out
