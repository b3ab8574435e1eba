"""The study bench's real-data mode: its packaged hippocampus spec and its refusals (the study itself runs
for an hour and lives in `make bench-study ARGS="--data ..."`, not here)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from medsynth.studies.plan import expand
from medsynth.studies.spec import StudyCreate
from medsynth.bench import study as bench
from medsynth.local.study_client import read_spec


def test_the_packaged_hippocampus_spec_is_the_grid_the_issue_asks_for() -> None:
    spec = StudyCreate.model_validate({**read_spec(bench.SPECS / "hippocampus-msd.yaml"), "dataset": "bench", "view_id": "v"})
    assert len(spec.families) >= 3 and len(spec.seeds) >= 3  # the Friedman test needs three families
    assert spec.arms.synthetic and spec.arms.ratios and spec.arms.synthetic_patients
    kinds = Counter(node.kind.value for node in expand(spec).values())
    per_seed = 1 + len(spec.families) * (1 + len(spec.arms.ratios) + len(spec.arms.synthetic_patients))
    assert kinds == {"train-generator": 9, "sample-cohort": 9, "evaluate": 9, "train-segmenter": 3 * per_seed}


def test_data_without_images_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no imagesTr/ folder"):
        bench.main(["--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_the_study_table_names_the_files_beside_it(tmp_path: Path) -> None:
    for name in ("study.json", "study.csv", "report.html", "cd.svg", "results.json"):
        (tmp_path / name).write_text("x")
    results = {"data": "d", "jobs": 66, "cpu_count": 2, "omp_num_threads": "1", "state": "succeeded", "wall_s": 600.0,
               "run_s_total": 1200.0, "scheduling_s": {"p50": 0.1, "p95": 0.2, "max": 0.3}}
    text = bench.study_table(results, "s.yaml", tmp_path)
    assert "study succeeded after 10.0 min; its jobs ran 20.0 min in all" in text
    assert "cd.svg, report.html, study.csv, study.json." in text and "results.json" not in text.split("files here")[1]
