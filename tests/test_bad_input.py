"""Every kind of bad input through the real CLI (``main(argv)``): exit 2 with one line on
stderr that names the problem, no traceback, no run directory left behind, and the corrected
command then runs (not refused because a failed attempt left a directory)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from crucible.recipes import config_to_dict, load_config
from crucible.run import main

from .recipes.run_kit import tiny_overrides

# One step, one small evaluation at the end, the final checkpoint only: about a second.
FAST = {
    "max_steps": 1,
    "eval_every": 0,
    "eval_at_start": False,
    "eval_examples": 2,
    "eval_max_tokens": 2,
    "save_every": 0,
}


def run_dir(folder: Path) -> Path:
    return folder / "run"


def argv(folder: Path, *extra_args: str, **extra: object) -> list[str]:
    """A good fast run in ``folder / "run"`` (writing the tiny dataset afresh), plus extras."""
    return [*tiny_overrides(folder, run_dir(folder), **{**FAST, **extra}), "--quiet", *extra_args]


def corrupt_train_line(content: bytes) -> Callable[[Path], list[str]]:
    """The good command, with ``content`` as line 3 of the training file."""

    def make(folder: Path) -> list[str]:
        command = argv(folder)
        train = folder / "train.jsonl"
        lines = train.read_bytes().splitlines(keepends=True)
        train.write_bytes(b"".join([*lines[:2], content + b"\n", *lines[2:]]))
        return command

    return make


def written(name: str, content: bytes, *extra_args: str) -> Callable[[Path], list[str]]:
    """The good command with the file ``name`` (a TOML config, unless ``extra_args`` use it)."""

    def make(folder: Path) -> list[str]:
        command = argv(folder, *extra_args)
        (folder / name).write_bytes(content)
        return command if extra_args else [str(folder / name), *command]

    return make


def ended_without_checkpoint(folder: Path) -> list[str]:
    """A run directory whose run ended (summary.json) before its first checkpoint."""
    config = load_config(None, tiny_overrides(folder, run_dir(folder), **FAST))
    run_dir(folder).mkdir()
    (run_dir(folder) / "config.json").write_text(json.dumps(config_to_dict(config)))
    (run_dir(folder) / "summary.json").write_text(json.dumps({"status": "failed"}))
    return ["--resume", str(run_dir(folder)), "--quiet"]


def with_file_at(name: str, make: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        (folder / name).write_text("a file, not a directory\n")
        return make(folder)

    return setup


@attrs.frozen
class Case:
    id: str
    make: Callable[[Path], list[str]]
    says: str  # what the one line must contain
    fix: Callable[[Path], list[str]] | None = None  # the corrected command, run afterwards


def fixed(folder: Path) -> list[str]:
    return argv(folder)


CASES = [
    Case("unknown key", lambda f: argv(f, "lrr=0.001"), "unknown config key 'lrr'", fixed),
    Case("bad type", lambda f: argv(f, batch_size="four"), "batch_size must be an integer"),
    Case("negative lr", lambda f: argv(f, lr=-1), "lr must be > 0, got -1"),
    Case("fault rate above 1", lambda f: argv(f, inject_faults=1.5), "between 0 and 1"),
    Case("zero batch", lambda f: argv(f, batch_size=0), "batch_size must be >= 1"),
    Case("unknown fault op", lambda f: argv(f, fault_ops=["nope"]), "unknown ops ['nope']"),
    Case(
        "missing dataset",
        lambda f: argv(f, dataset=str(f / "missing.jsonl")),
        "missing.jsonl: No such file or directory",
        fixed,
    ),
    Case(
        "invalid JSON line",
        corrupt_train_line(b'{"messages": ['),
        "train.jsonl:3: not valid JSON",
        fixed,
    ),
    Case(
        "wrong schema",
        corrupt_train_line(b'{"text": "hello"}'),
        "train.jsonl:3: not a conversation (Object missing required field `messages`)",
        fixed,
    ),
    Case(
        "empty messages",
        corrupt_train_line(b'{"messages": []}'),
        "train.jsonl:3: not a conversation (messages is empty)",
        fixed,
    ),
    Case(
        "bytes that are not UTF-8",
        corrupt_train_line(b'{"messages": [{"role": "user", "content": "\xff"}]}'),
        "train.jsonl:3: bytes that are not UTF-8 text",
        fixed,
    ),
    Case(
        "every line bad, skipped",
        written("bad.jsonl", b"{}\n[]\n", "dataset=bad.jsonl", "skip_bad_lines=true"),
        "bad.jsonl holds no usable conversation",
    ),
    Case(
        "log_dir below a file",
        with_file_at("occupied", lambda f: argv(f, log_dir=str(f / "occupied" / "run"))),
        "occupied, which is a file, not a directory",
        fixed,
    ),
    # Root may write anywhere a permission bit forbids, but not into sysfs.
    Case(
        "log_dir nobody can write",
        lambda f: argv(f, log_dir="/sys/crucible-test/run"),
        "cannot write in /sys",
    ),
    Case("name with a space", lambda f: argv(f, "log_dir=None", name="my run"), "name 'my run'"),
    Case(
        "run directory with a space",
        lambda f: argv(f, log_dir=str(f / "my run")),
        "its last part 'my run' is the run id",
        fixed,
    ),
    Case(
        "resume of a directory with no run",
        lambda f: ["--resume", str(f / "nothing"), "--quiet"],
        "no config.json there",
    ),
    Case(
        "resume of a run with no checkpoint",
        ended_without_checkpoint,
        "ended without a checkpoint to continue from",
    ),
    Case("TOML that does not parse", written("bad.toml", b"lr = = 1\n"), "not valid TOML"),
    Case("TOML that is not UTF-8", written("bad.toml", b"name = '\xe9'\n"), "not UTF-8 text"),
    Case(
        "TOML that does not exist",
        lambda f: [str(f / "nowhere.toml"), *argv(f)],
        "cannot read config file",
    ),
    Case(
        "two config files",
        lambda f: ["a.toml", "b.toml", *argv(f)],
        "give at most one config file",
    ),
    Case(
        "conflicting backend",
        lambda f: argv(f, "--backend", "local", backend="tinker"),
        "--backend local and backend='tinker' contradict each other",
    ),
    Case(
        "resume and another log_dir",
        lambda f: ["--resume", str(run_dir(f)), f"log_dir={f / 'other'}"],
        "name different run directories",
    ),
    Case(
        "quiet and a progress mode",
        lambda f: argv(f, "--progress", "bar"),
        "--quiet and --progress contradict each other",
    ),
    Case(
        "dry run and print config", lambda f: argv(f, "--dry-run", "--print-config"), "not allowed"
    ),
    Case("fault rate not a number", lambda f: argv(f, "--inject-faults", "lots"), "invalid float"),
    Case(
        "test_dataset without a dataset file",
        lambda f: argv(f, dataset="default"),
        "test_dataset is only read with a dataset file",
    ),
    Case(
        "init_from pointing nowhere",
        lambda f: argv(f, init_from=str(f / "nowhere")),
        "init_from",
        fixed,
    ),
    Case(
        "init_from a directory without checkpoints",
        lambda f: argv(f, init_from=str(f)),
        "has no state checkpoint",
    ),
    Case(
        "registry_path a directory",
        lambda f: argv(f, registry_path=str(f)),
        "is a directory, not a database file",
    ),
    # Found only when the backend starts: the run directory exists by then, and goes again.
    Case(
        "unknown base model",
        lambda f: argv(f, base_model="nope"),
        "base model 'nope' not found offline",
        fixed,
    ),
]


def test_there_are_at_least_19_kinds() -> None:
    assert len(CASES) >= 19 and len({case.id for case in CASES}) == len(CASES)


def _files(folder: Path) -> list[Path]:
    """Everything below ``folder`` but the model registry, which outlives runs (it sits beside
    them and a run that got as far as starting its backend opens it)."""
    return sorted(
        p.relative_to(folder) for p in folder.rglob("*") if not p.name.startswith("registry.")
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a default runs/<name>-<time> would land here
    command = case.make(tmp_path)
    before = _files(tmp_path)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert case.says in err and "Traceback" not in err
    assert _files(tmp_path) == before, "the failed command left something behind"
    if case.fix is not None:
        assert main(case.fix(tmp_path)) == 0, capsys.readouterr().err
        assert json.loads((run_dir(tmp_path) / "summary.json").read_text())["status"] == "completed"
