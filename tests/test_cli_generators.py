"""`medsynth generators list|families`: read the registry and the store, no running stack needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from medsynth.store.local import LocalStore


def _medsynth(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSYNTH_")} | {"MEDSYNTH_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "medsynth.local.cli", *args], env=env, capture_output=True, text=True, timeout=120)


def test_families_lists_every_registered_family_with_its_options(tmp_path: Path) -> None:
    out = _medsynth("generators", "families", "--verbose", home=tmp_path)
    assert out.returncode == 0, out.stderr
    for family in ("diffusion", "joint-gan", "spade", "stylegan2"):
        assert f"\n{family} " in "\n" + out.stdout
    assert "mask sources ['generated', 'real-deformed']" in out.stdout
    assert "gp_weight:" in out.stdout and "(default 10.0)" in out.stdout


def test_list_reads_the_store(tmp_path: Path) -> None:
    assert "no trained generators" in _medsynth("generators", "list", home=tmp_path).stdout
    store = LocalStore(tmp_path / "store")
    store.put_json("generators/train-generator-1/generator.json", {
        "generator_id": "train-generator-1", "family": "spade", "dataset": "hippo", "steps_done": 812,
        "mask_sources": ["generated", "real-deformed"], "registered_at": "2026-12-01T10:00:00+00:00",
    })  # fmt: skip
    out = _medsynth("generators", "list", home=tmp_path)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("train-generator-1"))
    assert row.split()[:4] == ["train-generator-1", "spade", "hippo", "812"] and "generated,real-deformed" in row
