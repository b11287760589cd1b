"""The whole sl_basic recipe (``python -m crucible.run``) with ``--backend tinker``: the real
Tinker SDK against the local server gives the local backend's losses."""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible.run import main
from crucible.tinker_server import ServerConfig, running_server

from ..recipes.run_kit import read_jsonl, tiny_overrides
from .tinker_kit import API_KEY

RANK = 4


def _losses(run_dir: Path) -> dict[int, float]:
    return {
        record["step"]: record["value"]
        for record in read_jsonl(run_dir / "metrics.jsonl")
        if record["metric"] == "train/loss"
    }


def test_sl_basic_on_tinker_matches_the_local_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_API_KEY", API_KEY)
    # The server's models use alpha = 2 * rank; the local run must too.
    same = {"lora_rank": RANK, "lora_alpha": 2.0 * RANK, "seed": 3}
    local_dir = tmp_path / "local"
    (tmp_path / "l").mkdir()
    (tmp_path / "t").mkdir()
    assert main([*tiny_overrides(tmp_path / "l", local_dir, **same), "--quiet"]) == 0
    config = ServerConfig(
        port=0,
        root=tmp_path / "server",
        api_keys={API_KEY},
        long_poll_s=5.0,
        client_config={"fwdbwd_max_chunk_len": 2},  # chunks arrive out of order
    )
    tinker_dir = tmp_path / "tinker"
    with running_server(config) as server:
        overrides = tiny_overrides(
            tmp_path / "t", tinker_dir, tinker_base_url=server.base_url, **same
        )
        assert main([*overrides, "--backend", "tinker", "--quiet"]) == 0
    local, remote = _losses(local_dir), _losses(tinker_dir)
    assert sorted(remote) == sorted(local) and len(local) >= 8
    final = max(local)
    assert remote[final] == pytest.approx(local[final], rel=1e-3)
    for step in local:  # every step, not only the last, within float-reordering noise
        assert remote[step] == pytest.approx(local[step], rel=1e-3)
    assert local[final] < local[min(local)]
