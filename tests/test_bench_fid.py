"""make bench-fid on a few images: both paths read the same files through one extractor and agree."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from medsynth.bench.fid import import_cleanfid, markdown, run
from medsynth.core.errors import MedsynthError


def test_medsynth_and_cleanfid_agree_on_the_same_files(tmp_path: Path) -> None:
    result = run(n=40, rounds=2, batch_size=16, workers=0, seed=1, work=tmp_path)
    for row in result["rows"]:
        assert row["medsynth"]["fid"] > 0 and row["relative_difference"] < 1e-5, row
        assert row["medsynth"]["seconds"] > 0 and row["clean-fid"]["seconds"] > 0
    assert len(list((tmp_path / "real").glob("*.png"))) == 40
    assert "| 2 |" in markdown(result) and "median time ratio" in markdown(result)


def test_a_missing_cleanfid_is_named_with_the_lock_that_pins_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """clean-fid is development tooling (requirements-tools.lock): the bench imports it lazily and says so."""
    monkeypatch.setitem(sys.modules, "cleanfid", None)  # import cleanfid now raises ImportError
    with pytest.raises(MedsynthError, match=r"clean-fid.*requirements-tools\.lock.*make install"):
        import_cleanfid()
