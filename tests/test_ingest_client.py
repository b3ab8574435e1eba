"""`medsynth ingest DIR`: patient mappings for NIfTI folders, DICOM folders uploaded per patient, a folder
larger than the rate limit's burst getting in whole, and the demo stopping when a case did not get in."""

from __future__ import annotations

import re
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


def _series(folder: Path, patient: str, number: int, shape=(16, 12, 4), seed: int = 0, edit=None) -> list:
    """One series of ``patient`` written to ``folder`` (``edit(ds, k)`` may change each instance)."""
    folder.mkdir(parents=True)
    image = np.random.default_rng(seed).integers(0, 1000, shape).astype(np.float32)
    identity = SeriesIdentity(patient, f"Doe^{patient}", series_number=number, series_description=f"series of {patient}")
    datasets = series_from_volume(image, np.eye(4), identity)
    for k, ds in enumerate(datasets):
        if edit is not None:
            edit(ds, k)
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)
    return datasets


def _overlapping_seg(sources: list, path: Path) -> None:
    """A DICOM-SEG on ``sources`` whose two segments hold the same voxels (refused under the no-overlap rule)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    pixels = np.zeros((len(sources), sources[0].Rows, sources[0].Columns, 2), dtype=np.uint8)
    pixels[1:3, 2:8, 2:6, :] = 1
    segments = [hd.seg.SegmentDescription(segment_number=n, segment_label=f"s{n}", segmented_property_category=codes.SCT.Tissue,
                                          segmented_property_type=codes.SCT.Tissue,
                                          algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL) for n in (1, 2)]
    seg = hd.seg.Segmentation(source_images=sources, pixel_array=pixels, segmentation_type="BINARY", segment_descriptions=segments,
                              series_instance_uid=generate_uid(), series_number=99, sop_instance_uid=generate_uid(), instance_number=1,
                              manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1")
    path.parent.mkdir(parents=True)
    seg.save_as(path)


def _pacs_export(root: Path) -> Path:
    """Three patients: p1 a good series, a Siemens mosaic without its CSA header (refused) and a series one
    instance of which may show identity (quarantined); p2 a good series with an overlapping SEG (stored
    unlabeled); p3 a good series."""
    import pydicom

    _series(root / "p1" / "t1", "HOSP-1", 1)
    _series(root / "p1" / "bold", "HOSP-1", 7, shape=(8, 8, 1), seed=1,
            edit=lambda ds, k: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]))
    _series(root / "p1" / "sc", "HOSP-1", 5, seed=2, edit=lambda ds, k: setattr(ds, "BurnedInAnnotation", "YES" if k == 1 else "NO"))
    _series(root / "p2" / "t1", "HOSP-2", 1, seed=3)
    _overlapping_seg([pydicom.dcmread(f) for f in sorted((root / "p2" / "t1").glob("*.dcm"))], root / "p2" / "seg" / "seg.dcm")
    _series(root / "p3" / "t1", "HOSP-3", 1, seed=4)
    return root


def test_a_dicom_folder_summary_counts_and_names_each_series(platform_settings, tmp_path: Path, store: ObjectStore, capsys) -> None:
    """`medsynth ingest` on a DICOM folder: accepted / unlabeled / quarantined / refused counts, each series
    that was not accepted named by the folder (or file) it was sent from, and the reason; exit status 1."""
    root = _pacs_export(tmp_path / "pacs")
    key = api_key(platform_settings, "uploader")
    with live_server(create_ingest_app(platform_settings)) as url:
        assert main(["ingest", str(root), "--dataset", "pacs", "--url", url, "--api-key", key]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "accepted 2, unlabeled 1, quarantined 1, refused 1, already present 0", lines
    text = "\n".join(lines)
    assert re.search(r"  refused p1/bold/0000\.dcm: series 7: bold/0000\.dcm is a Siemens mosaic .* without its CSA image header",
                     text), text
    assert re.search(r"  quarantined p1/sc/ \(4 files\): sc/0001\.dcm may show identifying text", text), text
    assert re.search(r"  unlabeled p2/seg/seg\.dcm \+ p2/t1/ \(4 files\): mask not used, the series is stored unlabeled: "
                     r"seg\.dcm \(DICOM-SEG\): segments 1 \('s1'\) and 2 \('s2'\) overlap", text), text
    assert "HOSP-" not in text and "Doe^" not in text and "series of" not in text  # nothing read from the files
    manifest = load_manifest(store, "pacs")
    assert len(manifest.scans) == 3 and sum(e.label_key is None for e in manifest.scans) == 3


def test_on_error_stop_sends_no_patient_after_a_refusal(platform_settings, tmp_path: Path, store: ObjectStore) -> None:
    root = _pacs_export(tmp_path / "pacs")
    with live_server(create_ingest_app(platform_settings)) as url:
        summary = ingest_folder(root, "stopped", url, api_key=api_key(platform_settings, "uploader"), progress=False, workers=1,
                                on_error="stop")
    assert summary.lines()[0] == ("accepted 1, unlabeled 0, quarantined 1, refused 1, already present 0, not sent 2 "
                                  "(--on-error stop)"), summary.lines()
    assert summary.not_sent == ["p2/seg/seg.dcm + p2/t1/ (4 files)", "p3/t1/ (4 files)"]
    assert not summary.complete and len(load_manifest(store, "stopped").scans) == 1


SHARED_SIEMENS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dcm_qa_nih" / "In" / "20180918Si"


@pytest.mark.skipif(not SHARED_SIEMENS.is_dir(), reason="../shared/data/dcm_qa_nih is not on this machine (only in the dev/CI tree)")
def test_a_real_mosaic_study_with_one_series_stripped_of_its_csa_header(platform_settings, tmp_path: Path, store: ObjectStore,
                                                                        capsys) -> None:
    """dcm_qa_nih's Siemens study (four EPI series, two mosaics each), one series' CSA headers removed as an
    anonymiser that drops private attributes would: three series stored, that one refused, named by its
    folder (in a project that keeps a time series' first time point)."""
    import shutil

    import pydicom

    from medsynth.store.projects import DicomOptions, Projects, project_store

    root = tmp_path / "si"
    shutil.copytree(SHARED_SIEMENS, root)
    for path in sorted((root / "mr_0005").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.remove_private_tags()
        ds.save_as(path)
    Projects(store).create("epi", dicom=DicomOptions(time_series="first"))
    key = api_key(platform_settings, "uploader", project="epi")
    with live_server(create_ingest_app(platform_settings)) as url:
        assert main(["ingest", str(root), "--dataset", "epi", "--url", url, "--api-key", key]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "accepted 3, unlabeled 0, quarantined 0, refused 1, already present 0", lines
    assert re.match(r"  refused mr_0005/ \(2 files\): series 5: epi_pe_rl-0000[12]\.dcm is a Siemens mosaic .* without its CSA "
                    r"image header", lines[1]), lines
    assert len(load_manifest(project_store(store, "epi"), "epi").scans) == 3


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
