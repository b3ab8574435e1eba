"""`make bench-ingest`'s conversion phase without the stack: on two small series it writes itself, it
times dcm2niix and medsynth, repeats a small input up to its files a round, and reports each series'
voxel identity per input in its table."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medsynth.bench.ingest import MIN_FILES_PER_ROUND, conversion_phase, table, write_synthetic_series


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix is not installed (.ci/run installs it)")
def test_the_conversion_phase_reports_each_series_and_its_ratio(tmp_path: Path) -> None:
    folders = write_synthetic_series(tmp_path, n=2, slices=12)
    c = conversion_phase(folders, rounds=1, echo=lambda *_: None)
    assert c["files"] == 24 and c["repeat"] == -(-MIN_FILES_PER_ROUND // 24)
    assert set(c["rows"]) == {"dcm2niix", "medsynth, 1 process", "medsynth, 2 processes"}
    assert c["rows"]["dcm2niix"]["vs_dcm2niix"] == 1.0 and c["rows"]["medsynth, 1 process"]["files_per_s"] > 0
    assert [s["series"] for s in c["per_series"]] == ["series00", "series01"]
    assert c["voxel_identical"] == [True, True] and all(s["shape"] == [64, 64, 12] for s in c["per_series"])
    text = table({"cpu_count": 2, "inputs": {"synthetic": "two series"}, "conversion": {"synthetic": c}})
    assert "## Conversion: synthetic" in text and "| series00 | 12 | 64x64x12 | yes |" in text
    assert f"converts them {c['repeat']} time(s)" in text
