"""The base models a server serves, by name, and where a client's tokenizer finds them.

Tinker clients name a base model twice: in their requests, and to their own tokenizer
(``AutoTokenizer.from_pretrained(name)``, as tinker-cookbook and the SDK's ``get_tokenizer``
do). So every name served must also resolve offline on the client's side. A served model that
is a Hugging Face directory is therefore accepted under its name and under its directory's
absolute path (``from_pretrained`` reads a directory directly), and ``link_hf_cache`` lays the
served models out as a Hugging Face hub cache, where ``from_pretrained(name)`` finds them by
name with ``HF_HUB_CACHE=DIR HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import attrs

from crucible._fs import write_bytes_atomically
from crucible.training import UnknownBaseModel
from crucible.training.backends.local import BASE_MODELS, BaseModelSpec, resolve_model


@attrs.frozen
class ServedModel:
    """``source`` is what the local backend loads (a shipped model's name or a directory), so
    every name of one model shares one loaded copy of its base weights."""

    name: str
    source: str
    directory: Path
    context_length: int


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` serves the directory PATH as NAME; a bare ``NAME`` serves what the local
    backend finds under that name (a shipped model, a directory, an HF-cache id)."""
    name, sep, source = spec.partition("=")
    name, source = name.strip(), source.strip()
    if not name or (sep and not source):
        raise ValueError(f"a served model is NAME=PATH or NAME, got {spec!r}")
    return name, source if sep else name


def _served(name: str, source: str) -> ServedModel:
    spec: BaseModelSpec = resolve_model(source)  # UnknownBaseModel names where it looked
    # A shipped model keeps its shipped name as the source: the process-wide cache of loaded
    # base models is keyed by it, and other users of the local backend load it by that name.
    directory = spec.directory.resolve()
    shipped = [
        shipped_name
        for shipped_name, shipped_spec in BASE_MODELS.items()
        if shipped_spec.directory.resolve() == directory
    ]
    loaded_as = shipped[0] if shipped else str(directory)
    return ServedModel(name, loaded_as, directory, spec.config.context_length)


class ServedModels:
    """The served models by name, plus each directory model by its absolute path."""

    def __init__(self, specs: Iterable[tuple[str, str]]) -> None:
        pairs = list(specs) or [(name, name) for name in sorted(BASE_MODELS)]
        self.models: dict[str, ServedModel] = {}
        for name, source in pairs:
            if name in self.models:
                raise ValueError(f"model {name!r} is served twice")
            self.models[name] = _served(name, source)
        self._by_path = {str(model.directory.resolve()): model for model in self.models.values()}

    def lookup(self, name: str) -> ServedModel:
        """The served model ``name`` names, by name or by its directory's absolute path."""
        if name in self.models:
            return self.models[name]
        if os.path.isabs(name):
            found = self._by_path.get(str(Path(name).resolve()))
            if found is not None:
                return found
        raise UnknownBaseModel(
            f"unknown base model {name!r}; this server serves {', '.join(self.models)} "
            f"(also by directory: {', '.join(self._by_path) or 'none'}); start it with "
            "--model NAME=PATH to serve another"
        )

    def source(self, name: str) -> str:
        """What the local backend loads for a run on ``name`` (a served name or path)."""
        return self.lookup(name).source


def link_hf_cache(models: ServedModels, cache: Path) -> list[str]:
    """Lay out each served directory model whose name is an ``org/name`` id in ``cache`` as
    the Hugging Face hub cache does (``models--org--name/snapshots/REV/`` with the files
    symlinked, ``refs/main`` naming REV), so a client with ``HF_HUB_CACHE=cache
    HF_HUB_OFFLINE=1`` loads its tokenizer by the served name. Idempotent; returns the names
    linked. REV is a digest of the files' names and sizes: a retrained model gets a new one."""
    linked = []
    for model in models.models.values():
        if model.name.count("/") != 1 or model.name.startswith("/"):
            continue
        files = sorted(p for p in model.directory.iterdir() if p.is_file())
        digest = hashlib.sha1()
        for path in files:
            digest.update(f"{path.name}:{path.stat().st_size}:{path.stat().st_mtime_ns}\n".encode())
        revision = digest.hexdigest()
        repo = cache / ("models--" + model.name.replace("/", "--"))
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True, exist_ok=True)
        for path in files:
            link = snapshot / path.name
            if not link.is_symlink():
                link.symlink_to(path.resolve())  # the model's own files, never a copy
        refs = repo / "refs"
        refs.mkdir(exist_ok=True)
        write_bytes_atomically(refs / "main", revision.encode())
        linked.append(model.name)
    return linked
