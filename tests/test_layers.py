"""The architecture's import rules (docs/index.md), checked on the source of every module.

1. A lower layer never imports a higher one (lazy and type-only imports included: a
   dependency is a dependency, whenever it is resolved).
2. Nobody imports another package's private module: ``crucible.a._b`` (or anything below it)
   may be imported only from inside ``crucible.a``. ``crucible._fs`` is the root package's own
   private module, so every module may use it.
3. ``crucible.testing`` serves tests and benchmarks; the library itself never imports it, and
   ``bench/`` imports nothing from ``tests/``.
4. docs/index.md lists where every public name lives (``scripts/public_names.py``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "crucible"

#: The layer of each top-level module or package of crucible (DESIGN.md, docs/index.md).
LAYERS: dict[str, int] = {
    "_fs": 0,
    "actors": 1,
    "stats": 1,
    "metrics": 2,
    "telemetry": 3,
    "training": 4,
    "recipes": 5,
    "plot": 5,
    "run": 6,
    "service": 6,
    "serve": 6,
    "tinker_server": 6,
    "testing": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            # ``from crucible.a import _b`` imports the private module crucible.a._b.
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    yield node.lineno, f"{target}.{alias.name}"


def _top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _private_owner(module: str) -> str | None:
    """The package whose private module ``module`` is (or lies in), if any."""
    parts = module.split(".")
    for index, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:index])
    return None


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_top_level_module_has_a_layer() -> None:
    found = {
        (p.stem if p.suffix == ".py" else p.name)
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").exists()) and not p.name.startswith("__")
    }
    missing = sorted(found - LAYERS.keys())
    assert not missing, f"give these a layer in LAYERS and docs/index.md: {missing}"


def _violations() -> list[str]:
    problems: list[str] = []
    for path in _sources():
        importer = _module_name(path)
        own = _top(importer)
        for line, target in _imports(path):
            if not _inside(target, "crucible") or target == "crucible":
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            other = _top(target)
            if own and other in LAYERS and LAYERS[other] > LAYERS[own]:
                problems.append(f"{where}: layer {LAYERS[other]} above {own}'s {LAYERS[own]}")
            if other == "testing" and own != "testing":
                problems.append(f"{where}: the library never imports crucible.testing")
            owner = _private_owner(target)
            if owner is not None and not _inside(importer, owner):
                problems.append(f"{where}: a private module of {owner}")
    return problems


def test_no_upward_or_private_imports() -> None:
    problems = _violations()
    assert not problems, "\n".join(problems)


def test_bench_imports_nothing_from_tests() -> None:
    problems = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in sorted((ROOT / "bench").rglob("*.py"))
        for line, target in _imports(path)
        if _inside(target, "tests")
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from crucible.recipes import SL_BASIC\n", "layer 5 above metrics's 2"),
        ("from crucible.training._session import Session\n", "a private module of"),
        ("from crucible.training import _session\n", "a private module of"),
        ("import crucible.testing\n", "never imports crucible.testing"),
    ],
)
def test_the_check_catches_violations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, expected: str
) -> None:
    """The rules fail on a planted violation (so a passing check means something)."""
    fake_root = tmp_path / "repo"
    (fake_root / "crucible" / "metrics").mkdir(parents=True)
    (fake_root / "crucible" / "__init__.py").write_text("")
    (fake_root / "crucible" / "metrics" / "__init__.py").write_text("")
    (fake_root / "crucible" / "metrics" / "_bad.py").write_text(source)
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "ROOT", fake_root)
    monkeypatch.setattr(this, "PACKAGE", fake_root / "crucible")
    problems = _violations()
    assert any(expected in problem for problem in problems), problems


def test_docs_index_lists_every_public_name() -> None:
    """docs/index.md's table of public names is generated from the packages' ``__all__``."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "public_names.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
