"""Print (or check) the "Where each public name lives" table of docs/index.md.

    python scripts/public_names.py           # rewrite the table in docs/index.md
    python scripts/public_names.py --check   # exit 1 if the table is out of date

The table lists, for every public package, the classes and functions it exports (its
``__all__``), so a reader can find where a name lives without opening the source. Packages
that need optional extras (torch for the local backend) are listed when they import.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

INDEX = Path(__file__).resolve().parent.parent / "docs" / "index.md"
BEGIN = "<!-- public-names:begin (scripts/public_names.py) -->"
END = "<!-- public-names:end -->"

PACKAGES = (
    "crucible",
    "crucible.actors",
    "crucible.stats",
    "crucible.metrics",
    "crucible.telemetry",
    "crucible.training",
    "crucible.training.port",
    "crucible.training.session",
    "crucible.training.checkpoints",
    "crucible.training.registry",
    "crucible.training.sampling",
    "crucible.training.backends.local",
    "crucible.recipes",
    "crucible.recipes.sl_basic",
    "crucible.service",
    "crucible.tinker_server",
    "crucible.testing",
)


def _kind(value: object) -> str:
    if inspect.isclass(value):
        return "errors" if issubclass(value, BaseException) else "classes"
    if callable(value):
        return "functions"
    return "constants and types"


def table() -> str:
    rows = ["| package | exports |", "|---|---|"]
    for name in PACKAGES:
        module = importlib.import_module(name)
        groups: dict[str, list[str]] = {}
        for export in sorted(module.__all__):
            groups.setdefault(_kind(getattr(module, export)), []).append(f"`{export}`")
        cells = "; ".join(
            f"{kind}: {', '.join(names)}"
            for kind in ("classes", "functions", "errors", "constants and types")
            if (names := groups.get(kind))
        )
        rows.append(f"| `{name}` | {cells} |")
    return "\n".join(rows)


def render(page: str) -> str:
    head, _, rest = page.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/index.md is stale")
    args = parser.parse_args()
    page = INDEX.read_text()
    if BEGIN not in page or END not in page:
        print(f"{INDEX}: missing the {BEGIN} ... {END} markers", file=sys.stderr)
        return 1
    updated = render(page)
    if args.check:
        if updated != page:
            print(f"{INDEX} is stale: run python scripts/public_names.py", file=sys.stderr)
            return 1
        return 0
    INDEX.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
