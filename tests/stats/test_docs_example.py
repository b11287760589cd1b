"""docs/stats.md's example runs as written and prints what the page says it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "stats.md"


def test_stats_md_example_prints_what_the_page_shows(tmp_path: Path) -> None:
    text = PAGE.read_text()
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[-1]
    shown = re.findall(r"prints:\n\n```\n(.*?)```", text, flags=re.S)[0]
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == shown
