"""Config loading: TOML and overrides, with errors that name the field and what it must be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crucible.recipes import ConfigError, TrainConfig, config_to_dict, load_config
from crucible.run import main


def test_defaults_need_no_arguments() -> None:
    assert load_config() == TrainConfig()


def test_toml_then_overrides_later_wins(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('lr = 0.01\nlr_schedule = "linear"\ntasks = ["addition"]\nepochs = 2\n')
    config = load_config(path, ["lr=1e-3", "log_dir=runs/x", "max_steps=none"])
    assert config.lr == 1e-3 and config.lr_schedule == "linear" and config.epochs == 2
    assert config.tasks == ("addition",) and config.log_dir == "runs/x"
    assert config.max_steps is None


def test_config_round_trips_through_its_json_form() -> None:
    config = load_config(None, ["lr=0.002", "fault_kinds=['crash']"])
    assert load_config(None, [], base=json.loads(json.dumps(config_to_dict(config)))) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lr_schedul=cosine"], "unknown config key 'lr_schedul'; did you mean 'lr_schedule'?"),
        (["bach_size=4"], "did you mean 'batch_size'?"),
        (["epochs=0"], "epochs must be >= 1, got 0"),
        (["epochs=abc"], "epochs must be an integer, got 'abc'"),
        (["epochs=true"], "epochs must be an integer, got True"),
        (["batch_size=2.5"], "batch_size must be an integer, got 2.5"),
        (["lr=-1"], "lr must be > 0"),
        (["lr=nan"], "lr must be a finite number"),
        (["lr_schedule=step"], "lr_schedule must be one of constant, linear, cosine"),
        (["train_on=everything"], "train_on must be one of all_assistant, last_assistant"),
        (["test_fraction=1.5"], "test_fraction must be between 0 and 1"),
        (["inject_faults=2"], "inject_faults must be between 0 and 1"),
        (["tasks=['chess']"], "tasks must be a non-empty list from"),
        (["fault_kinds=['meteor']"], "fault_kinds must be a list of one of latency"),
        (["name=a/b"], "name 'a/b' must be 1-100 letters, digits, '_', '.' or '-'"),
        (["name='a b'"], "name 'a b' must be 1-100 letters"),
        (["name=.hidden"], "starting with a letter or digit"),
        (["log_dir='runs/a b'"], "log_dir 'runs/a b': its last part 'a b' is the run id"),
        (["log_dir=''"], "log_dir must not be empty"),
        (["test_dataset=t.jsonl"], "test_dataset is only read with a dataset file"),
        (["fault_ops=['optim']"], "fault_ops has unknown ops ['optim']; known: forward_backward"),
        (["skip_bad_lines=1"], "skip_bad_lines must be true or false"),
        (["lr"], "override 'lr' is not of the form key=value"),
    ],
)
def test_every_config_error_names_the_field_and_what_it_must_be(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    assert message in str(caught.value)


def test_toml_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("lr = = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        load_config(broken)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("learning_rate = 1e-3\n")
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        load_config(unknown)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"name = 'caf\xe9'\n")
    with pytest.raises(ConfigError, match=r"latin1\.toml is not valid TOML: not UTF-8 text"):
        load_config(latin1)


def test_the_cli_reports_config_errors_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["epochs=0"]) == 2
    assert "config error: epochs must be >= 1, got 0" in capsys.readouterr().err
    assert main(["warmup=3"]) == 2
    assert "did you mean 'warmup_steps'?" in capsys.readouterr().err


def test_print_config_shows_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--print-config", "lr=1e-3", "--inject-faults", "0.2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["lr"] == 1e-3 and shown["inject_faults"] == 0.2
    assert set(shown) == set(config_to_dict(TrainConfig()))


def test_fault_kinds_are_training_s_own_even_when_built_directly() -> None:
    with pytest.raises(ConfigError, match="fault_kinds has unknown kinds"):
        TrainConfig(fault_kinds=("meteor",))  # type: ignore[arg-type]
