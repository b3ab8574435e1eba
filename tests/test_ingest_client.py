"""`medsynth ingest DIR`: patient mappings for NIfTI folders, DICOM folders uploaded per patient, a folder
larger than the rate limit's burst getting in whole, and the demo stopping when a case did not get in."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from medsynth.api.app import create_ingest_app
from medsynth.core.errors import InvalidInput, MedsynthError
from medsynth.datasets.manifest import load_manifest
from medsynth.datasets.phantoms import write_phantom_dataset
from medsynth.dicom.write import SeriesIdentity, series_from_volume
from medsynth.local.cli import main
from medsynth.local.demo import ingest_all
from medsynth.local.ingest_client import find_cases, ingest_folder, patient_mapping, upload_case
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


def _refused_429() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("medsynth_auth_refused_total", {"status": "429"}) or 0.0


#: A burst of 3 and 10 requests a second, for interactive calls and uploads alike: 4 workers sending
#: 12 scans meet 429s at once.
LOW_LIMITS = {"rate_limit_per_s": 10.0, "rate_limit_burst": 3, "rate_limit_upload_per_s": 10.0, "rate_limit_upload_burst": 3}


def test_a_folder_larger_than_the_rate_limits_burst_gets_in_whole(platform_settings, tmp_path: Path, store: ObjectStore) -> None:
    names = write_phantom_dataset(tmp_path / "msd", n=12, seed=3, shape=(8, 8, 4))
    settings = platform_settings.model_copy(update=LOW_LIMITS)
    refused = _refused_429()
    with live_server(create_ingest_app(settings)) as url:
        summary = ingest_folder(tmp_path / "msd", "paced", url, api_key=api_key(settings, "uploader"), progress=False)
    assert sorted(summary.accepted) == names and summary.complete, summary.lines()
    assert summary.lines() == ["accepted 12, already present 0, rejected 0"]
    assert _refused_429() > refused  # the service did pace the upload, and the client waited it out
    assert len(load_manifest(store, "paced").scans) == 12


def test_uploads_and_interactive_calls_draw_on_buckets_of_their_own(platform_settings, tmp_path: Path) -> None:
    write_phantom_dataset(tmp_path / "msd", n=3, seed=5, shape=(8, 8, 4))
    cases = find_cases(tmp_path / "msd")
    settings = platform_settings.model_copy(update={"rate_limit_per_s": 0.01, "rate_limit_burst": 2,
                                                    "rate_limit_upload_per_s": 0.01, "rate_limit_upload_burst": 2})
    headers = {"Authorization": f"Bearer {api_key(settings, 'uploader')}"}
    with live_server(create_ingest_app(settings)) as url, httpx.Client(headers=headers) as plain:  # no retries: see the 429s
        uploads = [upload_case(plain, url, "d", case) for case in cases]
        assert [r.status_code for r in uploads] == [201, 201, 429]
        assert "over the upload request rate" in uploads[2].json()["detail"] and int(uploads[2].headers["retry-after"]) >= 1
        reads = [plain.get(f"{url}/v1/datasets/d/dicom/series") for _ in range(3)]  # the uploads used none of these
        assert [r.status_code for r in reads] == [200, 200, 429], [r.text for r in reads]
        assert "over the request rate" in reads[2].json()["detail"]


def test_a_case_that_does_not_get_in_stops_the_demo_and_fails_the_command(platform_settings, tmp_path: Path) -> None:
    write_phantom_dataset(tmp_path / "msd", n=3, seed=4, shape=(8, 8, 4))
    (tmp_path / "msd" / "imagesTr" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    settings = platform_settings.model_copy(update=LOW_LIMITS)
    key = api_key(settings, "uploader")
    lines: list[str] = []
    with live_server(create_ingest_app(settings)) as url:
        with pytest.raises(MedsynthError, match=r"1 of 4 cases of .* did not get into dataset 'd': broken \(reasons above\)"):
            ingest_all(tmp_path / "msd", "d", url, key, echo=lines.append)
        assert lines[0].startswith("accepted 3, already present 0, rejected 1\n  broken: HTTP 422"), lines
        assert main(["ingest", str(tmp_path / "msd"), "--dataset", "d", "--url", url, "--api-key", key]) == 1
        (tmp_path / "msd" / "imagesTr" / "broken.nii.gz").unlink()
        assert main(["ingest", str(tmp_path / "msd"), "--dataset", "d", "--url", url, "--api-key", key]) == 0  # all present


def test_a_multi_modal_decathlon_folder_is_rejected_as_channels_not_time(tmp_path: Path) -> None:
    """dataset.json declaring several modalities (BraTS: FLAIR, T1w, t1gd, T2w) means channels on the
    fourth axis: every case is rejected with that reason, and nothing is sent (no server here)."""
    import json

    from medsynth.local.ingest_client import declared_channels

    root = _decathlon(tmp_path / "brats", ["BRATS_001", "BRATS_002"])
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}}))
    summary = ingest_folder(root, "brats", "http://127.0.0.1:9", api_key="unused", progress=False)
    assert not summary.accepted and not summary.failed
    assert set(summary.rejected) == {"BRATS_001", "BRATS_002"}
    assert "declares 4 modalities (FLAIR, T1w, t1gd, T2w): each image holds them as channels" in summary.rejected["BRATS_001"]
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}}))
    assert declared_channels(root) == ["MRI"]  # one modality: a fourth axis, if any, is time (the service's call)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(InvalidInput, match="is not a Decathlon dataset.json"):
        declared_channels(root)
