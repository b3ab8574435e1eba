"""`medsynth generators list --store|families`: read the registry and the store, no running stack needed."""

from __future__ import annotations

import os
import subprocess
import sys
import json
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
    assert "no trained generators" in _medsynth("generators", "list", "--store", home=tmp_path).stdout
    store = LocalStore(tmp_path / "store")
    stored = Path(__file__).parent / "stored"
    for n in (1, 2):  # entries of the first joint GAN and of generator families: neither recorded its steps
        store.put_json(f"generators/g{n}/generator.json", json.loads((stored / f"generator-entry-format{n}.json").read_text()))
    store.put_json("generators/broken/generator.json", {"generator_id": "broken", "family": "spade"})
    out = _medsynth("generators", "list", "--store", home=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    first, spade = rows["train-generator.20261123T101500.a1b2c3d4"], rows["train-generator.20261201T090000.0f0e0d0c"]
    assert first.split()[1:4] == ["joint-gan", "hippocampus", "3"] and "generated" in first  # its config's steps
    assert spade.split()[1:4] == ["spade", "hippocampus", "200"] and "generated,real-deformed" in spade
    assert "generators/broken/generator.json is not valid" in out.stderr and "checkpoint_key: Field required" in out.stderr
