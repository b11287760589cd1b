"""The sl_basic recipe's run configuration: attrs classes loaded with cattrs from TOML files
and ``key=value`` overrides, with errors that name the field and what was expected.

``load_config(path, ["lr=1e-3", "lr_schedule=cosine"])`` reads the TOML file (if any), applies
the overrides (each value is read as a TOML value, else as a plain string, so ``lr=1e-3`` is a
float and ``lr_schedule=cosine`` a string) and builds a checked ``TrainConfig``. Every mistake
raises ``ConfigError``: an unknown key names the nearest valid one, a wrong type or value names
the field and what it must be.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import attrs
import cattrs

from crucible.training import FAULT_KINDS, OPERATIONS, FaultKind

LrSchedule = Literal["constant", "linear", "cosine"]
TrainOn = Literal["all_assistant", "last_assistant"]
IfExists = Literal["ask", "delete", "resume", "raise"]
BackendName = Literal["local", "tinker"]
ChatTemplateName = Literal["auto", "tokenizer", "crucible", "role_colon"]


class ConfigError(ValueError):
    """The configuration is not valid; the message names the field and what it must be."""


#: A run's id (its directory's name, and ``name`` in the default directory) is a segment of
#: ``local://<run>/...`` and ``tinker://<run>/...`` checkpoint paths, so it follows their rule.
#: At most 128 characters, as the metrics service takes; ``name`` leaves room for the time.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
RUN_ID_CHARS = "letters, digits, '_', '.' or '-', starting with a letter or digit"


def _at_least(low: float) -> Any:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and value < low:
            raise ConfigError(f"{attribute.name} must be >= {low:g}, got {value!r}")

    return check


def _positive(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"{attribute.name} must be > 0, got {value!r}")


def _fraction(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _finite(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{attribute.name} must be a finite number, got {value!r}")


def check_service_url(url: str, what: str = "service_url") -> str:
    """An http(s) URL of the metric service, without credentials: the token travels in
    ``CRUCIBLE_TOKEN`` only, so it never lands in config.json."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} must be an http:// or https:// URL, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{what} must not carry credentials; put the token in CRUCIBLE_TOKEN instead"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"{what} must be the service's base URL, without ? or #")
    return url


def _service_url(_instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None:
        check_service_url(value, attribute.name)


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Everything a supervised fine-tuning run needs; every field has a working default.

    The defaults are the run ``python -m crucible.run`` does with no arguments: LoRA on the
    shipped ``crucible/tiny-chat`` base, learning 2-digit addition and word reversal, about half
    a minute on two CPU cores.
    """

    # -- the run
    name: str = "sl_basic"
    log_dir: str | None = None  # default: runs/<name>-<timestamp>
    behavior_if_exists: IfExists = "ask"
    seed: int = 0
    # -- the backend
    backend: BackendName = "local"
    base_model: str = "crucible/tiny-chat"
    lora_rank: int = attrs.field(default=16, validator=_at_least(1))
    lora_alpha: float = attrs.field(default=32.0, validator=_positive)
    num_threads: int | None = attrs.field(default=2, validator=_at_least(1))
    tinker_base_url: str | None = None  # None: TINKER_BASE_URL, then the Tinker service
    # auto: the tokenizer's own chat template when it has one ("tokenizer"), crucible's special
    # tokens on a tokenizer that has them, "User: ... Assistant: ..." (role_colon) otherwise
    chat_template: ChatTemplateName = "auto"
    # -- data
    dataset: str = "default"  # "default" (generated tasks) or a conversations JSONL file
    test_dataset: str | None = None  # JSONL; None: the default split, or a share of `dataset`
    test_fraction: float = attrs.field(default=0.1, validator=_fraction)
    tasks: tuple[str, ...] = ("addition", "reversal")  # for dataset = "default"
    skip_bad_lines: bool = False
    train_on: TrainOn = "all_assistant"
    max_length: int = attrs.field(default=512, validator=_at_least(2))  # tiny-chat's context
    # -- optimisation
    batch_size: int = attrs.field(default=64, validator=_at_least(1))
    epochs: int = attrs.field(default=1, validator=_at_least(1))
    max_steps: int | None = attrs.field(default=120, validator=_at_least(1))
    lr: float = attrs.field(default=3e-3, validator=[_finite, _positive])
    lr_schedule: LrSchedule = "cosine"
    warmup_steps: int = attrs.field(default=10, validator=_at_least(0))
    weight_decay: float = attrs.field(default=0.0, validator=[_finite, _at_least(0)])
    grad_clip_norm: float = attrs.field(default=1.0, validator=[_finite, _at_least(0)])
    # -- evaluation and checkpoints
    eval_every: int = attrs.field(default=40, validator=_at_least(0))  # 0: only at the end
    eval_at_start: bool = True  # the untrained model's numbers, for comparison
    eval_examples: int = attrs.field(default=200, validator=_at_least(1))
    eval_max_tokens: int = attrs.field(default=12, validator=_at_least(1))
    save_every: int = attrs.field(default=40, validator=_at_least(0))  # 0: only the final one
    # -- lineage and the registry
    registry_path: str | None = None  # default: registry.sqlite next to the run directory
    init_from: str | None = None  # another run's directory: start from its last weights
    # -- fault injection (shows the supervisor at work)
    inject_faults: float = attrs.field(default=0.0, validator=_fraction)
    fault_kinds: tuple[FaultKind, ...] = ("transient", "crash", "applied_then_failed")
    # The ops that get faults; empty: every op. By default the training ops, not evaluation's
    # sampling: hundreds of sample calls per evaluation would almost surely meet a crash.
    fault_ops: tuple[str, ...] = (
        "forward_backward",
        "optim_step",
        "save_state",
        "load_state",
        "save_weights_for_sampler",
    )
    max_restarts: int = attrs.field(default=50, validator=_at_least(0))  # within a minute
    restart_backoff_s: float = attrs.field(default=1.0, validator=[_finite, _at_least(0)])
    op_timeout_s: float = attrs.field(default=120.0, validator=_positive)
    # -- retries in place: a failed backend operation is sent again with its request id (the
    # backend answers a repeat from its record) up to max_retries times, after a backoff
    # doubling from retry_backoff_s up to retry_backoff_max_s (jitter seeded by `seed`); only a
    # lost backend restarts the session (counted by max_restarts). Every snapshot_every
    # optimizer steps the session saves a snapshot, so a restart replays at most that many
    # steps; None: every step on the local backend, never on tinker (a remote save costs).
    max_retries: int = attrs.field(default=8, validator=_at_least(0))  # per operation
    retry_backoff_s: float = attrs.field(default=0.002, validator=[_finite, _at_least(0)])
    retry_backoff_max_s: float = attrs.field(default=0.2, validator=[_finite, _at_least(0)])
    snapshot_every: int | None = attrs.field(default=None, validator=_at_least(0))
    # -- the metric service (docs/service.md): besides the run directory, log the run there.
    # None: $CRUCIBLE_SERVICE_URL if set, else no service. The token is $CRUCIBLE_TOKEN.
    service_url: str | None = attrs.field(default=None, validator=_service_url)
    # at the end, how long to wait for the service to take what is still buffered
    service_wait_s: float = attrs.field(default=5.0, validator=[_finite, _at_least(0)])

    def __attrs_post_init__(self) -> None:
        if not RUN_ID_PATTERN.fullmatch(self.name) or len(self.name) > 100:
            raise ConfigError(f"name {self.name!r} must be 1-100 {RUN_ID_CHARS}")
        if self.log_dir is not None:
            if not self.log_dir.strip():
                raise ConfigError("log_dir must not be empty (omit it for runs/<name>-<time>)")
            last = Path(self.log_dir).name  # the run's id in checkpoint paths
            if not RUN_ID_PATTERN.fullmatch(last):
                raise ConfigError(
                    f"log_dir {self.log_dir!r}: its last part {last!r} is the run id, which "
                    f"must be 1-128 {RUN_ID_CHARS}"
                )
        if self.test_dataset is not None and self.dataset == "default":
            raise ConfigError(
                "test_dataset is only read with a dataset file; dataset is 'default' "
                "(set dataset=... too, or drop test_dataset)"
            )
        known = {"addition", "reversal"}
        unknown = [task for task in self.tasks if task not in known]
        if unknown or not self.tasks:
            raise ConfigError(
                f"tasks must be a non-empty list from {sorted(known)}, got {list(self.tasks)}"
            )
        if not self.fault_kinds:
            raise ConfigError("fault_kinds must name at least one fault kind")
        # Loaded configs are checked against FaultKind by cattrs; this covers direct construction.
        unknown_kinds = sorted(set(self.fault_kinds) - set(FAULT_KINDS))
        if unknown_kinds:
            raise ConfigError(
                f"fault_kinds has unknown kinds {unknown_kinds}; known: {', '.join(FAULT_KINDS)}"
            )
        unknown_ops = sorted(set(self.fault_ops) - set(OPERATIONS))
        if unknown_ops:
            raise ConfigError(
                f"fault_ops has unknown ops {unknown_ops}; known: {', '.join(OPERATIONS)}"
            )


attrs.resolve_types(TrainConfig)  # the annotations are strings (postponed evaluation)
_FIELDS: dict[str, attrs.Attribute[Any]] = {f.name: f for f in attrs.fields(TrainConfig)}


def _describe(tp: Any) -> str:
    """What a type expects, in words a user reads ("an integer", "one of a, b")."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(arg) for arg in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in get_args(tp) if arg is not type(None)]
        inner = " or ".join(_describe(arg) for arg in args)
        return f"{inner} (or omitted)" if len(args) < len(get_args(tp)) else inner
    if origin is tuple:
        return f"a list of {_describe(get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def _converter() -> cattrs.Converter:
    """A strict converter: no silent bool->int, str->int or float->int conversions."""
    converter = cattrs.Converter(forbid_extra_keys=True)

    def strict(kind: type, accepts: tuple[type, ...]) -> Any:
        def structure(value: Any, _tp: Any) -> Any:
            if isinstance(value, bool) and kind is not bool:
                raise TypeError(f"expected {_describe(kind)}, got {value!r}")
            if not isinstance(value, accepts):
                raise TypeError(f"expected {_describe(kind)}, got {value!r}")
            return kind(value)

        return structure

    converter.register_structure_hook(int, strict(int, (int,)))
    converter.register_structure_hook(float, strict(float, (int, float)))
    converter.register_structure_hook(str, strict(str, (str,)))
    converter.register_structure_hook(bool, strict(bool, (bool,)))
    return converter


_CONVERTER = _converter()


def _field_type(key: str) -> Any:
    return _FIELDS[key].type


def _check_keys(data: Mapping[str, Any]) -> None:
    for key in data:
        if key not in _FIELDS:
            nearest = difflib.get_close_matches(key, list(_FIELDS), n=1, cutoff=0.5)
            hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
            raise ConfigError(f"unknown config key {key!r}{hint} (see --print-config)")


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Build a checked TrainConfig from plain data (TOML, JSON or overrides)."""
    _check_keys(data)
    for key, value in data.items():  # per field, so the error names it
        try:
            _CONVERTER.structure(value, _field_type(key))
        except Exception as error:
            raise ConfigError(
                f"{key} must be {_describe(_field_type(key))}, got {value!r}"
            ) from error
    try:
        return _CONVERTER.structure(dict(data), TrainConfig)
    except cattrs.ClassValidationError as group:
        for leaf in _leaves(group):
            if isinstance(leaf, ConfigError):
                raise leaf from None
        raise ConfigError(str(group)) from group


def _leaves(error: BaseException) -> Iterable[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain data (lists for tuples), as written to config.json and shown by --print-config."""
    data: dict[str, Any] = _CONVERTER.unstructure(config)
    return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-3", "tasks=['addition']", "log_dir=runs/x"]`` as typed values."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        parsed[key] = _parse_value(text.strip())
    return parsed


def _parse_value(text: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word such as `cosine` or a path


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """The config from ``base`` (e.g. a resumed run's config.json), then the TOML file at
    ``path``, then ``overrides``; later sources win."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot read config file {file}: {error.strerror}") from error
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"{file} is not valid TOML: not UTF-8 text (byte {error.start})"
            ) from error
        try:
            loaded = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{file} is not valid TOML: {error}") from error
        _check_keys(loaded)
        data.update(loaded)
    data.update(parse_overrides(overrides))
    return config_from_dict(data)
