"""The runnable examples in docs/ run as written, and print what the docs say they print."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _last_python_block(page: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    return str(blocks[-1])


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_actors_md_example_runs(backend: str, tmp_path: Path) -> None:
    code = _last_python_block("actors.md").replace(
        "anyio.run(main)", f"anyio.run(main, backend={backend!r})"
    )
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:3] == [
        "total: 40",
        "crashed: lost the GPU",
        "restarted with fresh state: 0",
    ]
