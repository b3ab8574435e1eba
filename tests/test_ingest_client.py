"""`medsynth ingest DIR`: patient mappings for NIfTI folders, and DICOM folders uploaded per patient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsynth.api.app import create_ingest_app
from medsynth.core.errors import InvalidInput
from medsynth.datasets.manifest import load_manifest
from medsynth.dicom.write import SeriesIdentity, series_from_volume
from medsynth.local.ingest_client import find_cases, ingest_folder, patient_mapping
from medsynth.store import ObjectStore

from platform_fixtures import api_key, live_server


def _decathlon(root: Path, cases: list[str]) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    for case in cases:
        (root / "imagesTr" / f"{case}.nii.gz").write_bytes(b"")
    return root


def test_a_csv_maps_cases_to_patients(tmp_path: Path) -> None:
    root = _decathlon(tmp_path / "us", ["img_001_a", "img_001_b", "img_002_a"])
    mapping = tmp_path / "patients.csv"
    mapping.write_text("case,patient_id\nimg_001_a,subj1\nimg_001_b,subj1\nimg_002_a,subj2\n")
    cases = find_cases(root, patient_mapping(mapping))
    assert [c.patient_id for c in cases] == ["subj1", "subj1", "subj2"]
    mapping.write_text("case,patient_id\nimg_001_a,subj1\n")
    with pytest.raises(InvalidInput, match="'img_001_b' is not in"):
        find_cases(root, patient_mapping(mapping))


def test_a_pattern_maps_cases_to_patients(tmp_path: Path) -> None:
    root = _decathlon(tmp_path / "us", ["benign (12)_view1", "benign (12)_view2", "malignant (3)_view1"])
    cases = find_cases(root, patient_mapping(pattern=r"^(?P<patient>\w+ \(\d+\))_"))
    assert [c.patient_id for c in cases] == ["benign (12)", "benign (12)", "malignant (3)"]
    with pytest.raises(InvalidInput, match="needs a group"):
        patient_mapping(pattern=r"view\d")
    with pytest.raises(InvalidInput, match="does not match"):
        find_cases(root, patient_mapping(pattern=r"^(x)"))


def test_a_dicom_folder_is_uploaded_one_patient_at_a_time(platform_settings, tmp_path: Path, store: ObjectStore) -> None:
    rng = np.random.default_rng(0)
    for patient in ("HOSP-1", "HOSP-2"):
        folder = tmp_path / "pacs-export" / patient.lower() / "series1"
        folder.mkdir(parents=True)
        image = rng.integers(0, 1000, (16, 12, 4)).astype(np.float32)
        for k, ds in enumerate(series_from_volume(image, np.eye(4), SeriesIdentity(patient, f"Doe^{patient}"))):
            ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    (tmp_path / "pacs-export" / "README.txt").write_text("not DICOM")
    with live_server(create_ingest_app(platform_settings)) as url:
        summary = ingest_folder(tmp_path / "pacs-export", "pacs", url, api_key=api_key(platform_settings, "uploader"), progress=False)
    assert len(summary.accepted) == 2 and not summary.rejected, summary.lines()
    manifest = load_manifest(store, "pacs")
    assert len(manifest.patients) == 2 and not {"HOSP-1", "HOSP-2"} & set(manifest.patients)
