"""DICOM into a dataset three ways — REST upload, DICOMweb STOW-RS (dicomweb-client), C-STORE (dcmtk's
storescu) — each through the running ingest service, with a real store and broker, each giving the same
canonical volume; de-identified before anything is stored."""

from __future__ import annotations

import gzip
import io
import re
import socket
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_helpers import mosaic_series, phantom, read_folder, tool, with_raw_text, write_mosaics, write_series
from fastapi.testclient import TestClient

from medsynth.api.app import create_ingest_app
from medsynth.core.settings import DicomPeer, Settings
from medsynth.datasets.manifest import load_manifest
from medsynth.dicom.write import SeriesIdentity
from medsynth.store import ObjectStore

from platform_fixtures import bearer, live_server

IDENTITY = SeriesIdentity("HOSP-778899", "Smith^Alice", series_description="T1 brain Smith", series_number=3,
                          extra={"InstitutionName": "St Example Hospital", "ReferringPhysicianName": "Who^Doctor",
                                 "StudyDate": "20190305", "AccessionNumber": "ACC123456", "PatientBirthDate": "19610412"})
SECRETS = [b"HOSP-778899", b"Smith^Alice", b"St Example Hospital", b"Who^Doctor", b"20190305", b"ACC123456", b"19610412",
           b"T1 brain Smith"]


@pytest.fixture
def series(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    image, affine = phantom(shape=(40, 36, 6))
    write_series(tmp_path / "series", image, affine, identity=IDENTITY)
    return tmp_path / "series", image, affine


@pytest.fixture
def client(platform_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_ingest_app(platform_settings), headers=bearer(platform_settings, "uploader")) as c:
        yield c


def _files(folder: Path, prefix: str = "") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (prefix + f.name, f.read_bytes(), "application/dicom")) for f in sorted(folder.glob("*.dcm"))]


def _canonical(store: ObjectStore, key: str) -> np.ndarray:
    return np.asanyarray(nib.Nifti1Image.from_bytes(gzip.decompress(store.get_bytes(key))).dataobj)


def assert_no_identifier_stored(store: ObjectStore) -> None:
    for key in store.list(""):
        if key.startswith("auth/"):
            continue
        data = store.get_bytes(key)
        data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        for needle in SECRETS:
            assert needle not in data, (key, needle)


def test_rest_upload_ingests_a_deidentified_series(client: TestClient, series, store: ObjectStore) -> None:
    folder, _, _ = series
    r = client.post("/v1/datasets/brain/dicom", files=_files(folder))
    assert r.status_code == 201, r.text
    (scan,) = r.json()["scans"]
    assert scan["source_format"] == "dicom" and scan["dicom"]["instances"] == 6
    assert scan["patient_id"].startswith("P") and scan["patient_id"] != "HOSP-778899"
    assert np.array_equal(_canonical(store, scan["image_key"]), read_folder(folder).image)
    stored = sorted(store.list(scan["original_image_key"]))
    assert len(stored) == 6
    first = pydicom.dcmread(io.BytesIO(store.get_bytes(stored[0])))
    assert first.PatientIdentityRemoved == "YES" and first.PatientID == scan["patient_id"]
    assert load_manifest(store, "brain").scans[0].dicom.series_instance_uid == str(first.SeriesInstanceUID)
    assert_no_identifier_stored(store)
    again = client.post("/v1/datasets/brain/dicom", files=_files(folder))
    assert again.status_code == 409  # the same series twice


def test_a_zip_upload_gives_the_same_volume(client: TestClient, series, store: ObjectStore) -> None:
    folder, _, _ = series
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for f in sorted(folder.glob("*.dcm")):
            archive.write(f, f"study/{f.name}")
    r = client.post("/v1/datasets/zipped/dicom", files=[("file", ("study.zip", buffer.getvalue(), "application/zip"))])
    assert r.status_code == 201, r.text
    direct = client.post("/v1/datasets/direct/dicom", files=_files(folder)).json()["scans"][0]
    assert r.json()["scans"][0]["scan_id"] == direct["scan_id"]  # same canonical volume, same content hash


@pytest.mark.parametrize("case", ["not-dicom", "truncated", "missing-slice", "two-patients", "duplicate"])
def test_bad_uploads_are_refused_whole_and_leave_nothing(client: TestClient, series, store: ObjectStore, tmp_path: Path,
                                                          case: str) -> None:
    """An upload whose one series is refused (or that holds two patients) is a 422 naming the file, and
    nothing of it is stored: a series goes in whole or not at all."""
    folder, image, affine = series
    files = _files(folder)
    if case == "not-dicom":
        files = [("file", ("scan.nii.gz", b"\x1f\x8b" + b"x" * 400, "application/octet-stream"))]
        match = "scan.nii.gz is not a DICOM file"
    elif case == "truncated":
        name, (fname, data, kind) = files[2]
        files[2] = (name, (fname, data[:-300], kind))
        match = "0002.dcm"
    elif case == "missing-slice":
        del files[3]
        match = "a missing slice between 0002.dcm and 0004.dcm"
    elif case == "two-patients":
        other = SeriesIdentity("HOSP-000001", "Other^Bob", series_description="other")
        files += _files(write_series(tmp_path / "other", image, affine, identity=other)[0].parent)
        match = "2 patients"
    else:
        files.append(("file", ("again.dcm", files[1][1][1], "application/dicom")))
        match = "are the same instance (one SOPInstanceUID): duplicate instances"
    r = client.post("/v1/datasets/bad/dicom", files=files)
    assert r.status_code == 422, r.text
    assert match in r.json()["detail"]
    assert not [k for k in store.list("datasets/bad/")]
    assert_no_identifier_stored(store)


MALFORMED_NUMBERS = [("RescaleSlope", "abcd"), ("InstanceNumber", "zzzz"), ("PixelSpacing", "abc\\def")]


def _malformed(folder: Path, keyword: str, text: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The series' files, the second one with ``keyword`` holding ``text``."""
    files = _files(folder)
    name, (fname, data, kind) = files[1]
    files[1] = (name, (fname, with_raw_text(data, keyword, text), kind))
    return files


@pytest.mark.parametrize(("keyword", "text"), MALFORMED_NUMBERS, ids=[k for k, _ in MALFORMED_NUMBERS])
def test_a_malformed_number_is_a_422_naming_the_attribute_and_value(client: TestClient, series, store: ObjectStore,
                                                                     keyword: str, text: str) -> None:
    folder, _, _ = series
    r = client.post("/v1/datasets/bad/dicom", files=_malformed(folder, keyword, text))
    assert r.status_code == 422, r.text
    assert "0001.dcm" in r.json()["detail"] and keyword in r.json()["detail"] and repr(text) in r.json()["detail"], r.text
    assert not list(store.list("datasets/bad/"))


def test_two_series_with_one_volume_are_stored_once(client: TestClient, tmp_path: Path, store: ObjectStore) -> None:
    """Two series of one patient with identical pixels: the first is stored, the second is already
    present (207); sent again, both are (409, nothing stored)."""
    image, affine = phantom(shape=(24, 20, 3))
    files = []
    for number in (1, 2):
        identity = SeriesIdentity("HOSP-1", "Doe^Jane", series_description=f"copy {number}", series_number=number)
        files += _files(write_series(tmp_path / f"s{number}", image, affine, identity=identity)[0].parent, prefix=f"s{number}/")
    r = client.post("/v1/datasets/twice/dicom", files=files)
    assert r.status_code == 207, r.text
    first, second = r.json()["series"]
    assert first["fate"] == "stored" and second["fate"] == "already-present", r.text
    assert "series 2 is the same image as series 1 of this upload" in second["reason"]
    assert len(load_manifest(store, "twice").scans) == 1
    again = client.post("/v1/datasets/twice/dicom", files=files)
    assert again.status_code == 409 and again.json()["counts"]["already-present"] == 2, again.text


def test_an_empty_image_is_refused(client: TestClient, tmp_path: Path, store: ObjectStore) -> None:
    image, affine = phantom(shape=(16, 8, 1))
    folder = write_series(tmp_path / "empty", image, affine, edit=lambda ds, k: setattr(ds, "Rows", 0))[0].parent
    r = client.post("/v1/datasets/empty/dicom", files=_files(folder))
    assert r.status_code == 422, r.text
    assert "0000.dcm" in r.json()["detail"] and "Rows 0" in r.json()["detail"], r.text
    assert not list(store.list("datasets/empty/"))


def test_possible_burned_in_text_is_quarantined(client: TestClient, tmp_path: Path, store: ObjectStore) -> None:
    image, affine = phantom(shape=(40, 36, 3))
    folder = tmp_path / "burned"
    write_series(folder, image, affine, identity=IDENTITY, edit=lambda ds, k: setattr(ds, "BurnedInAnnotation", "YES" if k == 2 else "NO"))
    r = client.post("/v1/datasets/burned/dicom", files=_files(folder))
    assert r.status_code == 422, r.text  # one instance flagged: its whole series is held back, not shortened
    (outcome,) = r.json()["series"]
    assert outcome["fate"] == "quarantined" and outcome["files"] == ["0000.dcm", "0001.dcm", "0002.dcm"], r.text
    assert "nothing stored (1 quarantined): 0002.dcm may show identifying text" in r.json()["detail"]
    assert len(r.json()["quarantined"]) == 3
    assert not list(store.list("datasets/burned/"))
    (record,) = client.get("/v1/datasets/burned/dicom/series").json()["series"]
    assert (record["state"], record["fate"], record["source"]) == ("quarantined", "quarantined", "upload"), record
    assert record["reason"].startswith("instance 3 of series 3 may show identifying text"), record["reason"]  # not the file name
    assert_no_identifier_stored(store)


# --- STOW-RS -------------------------------------------------------------------------------------------


@pytest.fixture
def live(platform_settings: Settings) -> Iterator[tuple[str, dict]]:
    settings = platform_settings.model_copy(update={"dicom_quiet_s": 3600})
    with live_server(create_ingest_app(settings)) as url:
        yield url, bearer(settings, "uploader")


def test_stow_rs_with_dicomweb_client_then_commit(live, series, store: ObjectStore) -> None:
    from dicomweb_client.api import DICOMwebClient

    url, auth = live
    folder, _, _ = series
    client = DICOMwebClient(f"{url}/v1/datasets/stowed/dicomweb", headers=auth)
    response = client.store_instances([pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))])
    assert len(response.ReferencedSOPSequence) == 6 and "FailedSOPSequence" not in response
    import httpx

    staged = httpx.get(f"{url}/v1/datasets/stowed/dicom/series", headers=auth).json()["series"]
    assert [(s["state"], s["instances"], s["source"]) for s in staged] == [("staged", 6, "stow-rs")]
    done = httpx.post(f"{url}/v1/datasets/stowed/dicom/commit", headers=auth).json()["series"]
    assert done[0]["state"] == "ingested", done
    (entry,) = load_manifest(store, "stowed").scans
    assert np.array_equal(_canonical(store, entry.image_key), read_folder(folder).image)
    assert not list(store.list("dicom/staging/"))
    assert_no_identifier_stored(store)


def test_stow_rs_refuses_the_wrong_content_type_and_reports_bad_parts(live, series) -> None:
    import httpx

    url, auth = live
    folder, _, _ = series
    r = httpx.post(f"{url}/v1/datasets/stowed/dicomweb/studies", content=b"{}", timeout=30,
                   headers={**auth, "content-type": 'multipart/related; type="application/dicom+json"; boundary=x'})
    assert r.status_code == 415, r.text
    r = httpx.post(f"{url}/v1/datasets/bad..name/dicomweb/studies", content=b"--b--", timeout=30,
                   headers={**auth, "content-type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert r.status_code == 422 and "dataset name" in r.json()["detail"], r.text
    good = sorted(folder.glob("*.dcm"))[0].read_bytes()
    body = (b"--b\r\nContent-Type: application/dicom\r\n\r\n" + good + b"\r\n--b\r\nContent-Type: application/dicom\r\n\r\n"
            + b"garbage" * 30 + b"\r\n--b--\r\n")
    r = httpx.post(f"{url}/v1/datasets/stowed/dicomweb/studies", content=body, timeout=30,
                   headers={**auth, "content-type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert r.status_code == 202, r.text
    result = r.json()
    assert len(result["00081199"]["Value"]) == 1 and result["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert "part 2 is not a DICOM file" in r.headers["warning"]


def test_stow_rs_reports_malformed_numbers_per_instance(live, series) -> None:
    """Each instance with a malformed number fails with its own reason (the attribute and value named);
    the good instance is stored."""
    import httpx

    url, auth = live
    folder, _, _ = series
    good = sorted(folder.glob("*.dcm"))[0].read_bytes()
    parts = [good] + [_malformed(folder, keyword, text)[1][1][1] for keyword, text in MALFORMED_NUMBERS]
    body = b"".join(b"--b\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n" for part in parts) + b"--b--\r\n"
    r = httpx.post(f"{url}/v1/datasets/stowed/dicomweb/studies", content=body, timeout=30,
                   headers={**auth, "content-type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert r.status_code == 202, r.text
    result = r.json()
    assert len(result["00081199"]["Value"]) == 1 and len(result["00081198"]["Value"]) == 3
    for keyword, text in MALFORMED_NUMBERS:
        assert keyword in r.headers["warning"] and repr(text) in r.headers["warning"], r.headers["warning"]


# --- C-STORE --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_c_store_from_storescu_matches_the_rest_upload(platform_settings: Settings, series, store: ObjectStore) -> None:
    folder, _, _ = series
    port = _free_port()
    settings = platform_settings.model_copy(update={
        "dicom_port": port, "dicom_ae_title": "MEDSYNTH", "dicom_quiet_s": 1.0,
        "dicom_peers": [DicomPeer(ae_title="HOSPPACS", dataset="pushed")],
    })
    with TestClient(create_ingest_app(settings), headers=bearer(settings, "uploader")) as client:
        echo = subprocess.run([tool("echoscu"), "-aet", "HOSPPACS", "-aec", "MEDSYNTH", "127.0.0.1", str(port)], capture_output=True, text=True)
        assert echo.returncode == 0, echo.stderr
        refused = subprocess.run([tool("storescu"), "-aet", "STRANGER", "-aec", "MEDSYNTH", "127.0.0.1", str(port),
                                  *map(str, sorted(folder.glob("*.dcm")))], capture_output=True, text=True)
        assert refused.returncode != 0 and "Association Rejected" in refused.stdout + refused.stderr
        sent = subprocess.run([tool("storescu"), "-aet", "HOSPPACS", "-aec", "MEDSYNTH", "127.0.0.1", str(port),
                               *map(str, sorted(folder.glob("*.dcm")))], capture_output=True, text=True)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # assembled by the quiet-period committer, no commit call
            states = client.get("/v1/datasets/pushed/dicom/series").json()["series"]
            if states and states[0]["state"] != "staged":
                break
            time.sleep(0.5)
        assert states[0]["state"] == "ingested" and states[0]["source"] == "c-store:HOSPPACS", states
        uploaded = client.post("/v1/datasets/uploaded/dicom", files=_files(folder)).json()["scans"][0]
    (entry,) = load_manifest(store, "pushed").scans
    assert entry.scan_id == uploaded["scan_id"]  # the same canonical volume as the REST upload
    assert_no_identifier_stored(store)


# --- masks -----------------------------------------------------------------------------------------------


def _seg(folder: Path, label: np.ndarray, seg_type: str = "BINARY", *, slices: slice = slice(None), edit=None) -> bytes:
    """A DICOM-SEG (highdicom) of ``label`` (x, y, z; values 1 and 2, or a boolean (x, y, z, segment)
    stack) on the series in ``folder`` (its slices ``slices`` only); ``edit(seg)`` may change it."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))][slices]
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=name, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, name in ((1, "hippocampus head"), (2, "hippocampus body"))]
    pixels = np.ascontiguousarray(np.swapaxes(label, 0, 2)).astype(np.uint8)[slices]  # (slice, row, column[, segment])
    seg = hd.seg.Segmentation(source_images=sources, pixel_array=pixels, segmentation_type=seg_type,
                              segment_descriptions=descriptions, series_instance_uid=pydicom.uid.generate_uid(), series_number=99,
                              sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1, manufacturer="test",
                              manufacturer_model_name="test", software_versions="1", device_serial_number="1")
    if edit is not None:
        edit(seg)
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()


def _rtstruct(folder: Path, affine: np.ndarray, box: tuple[int, int, int, int], k: int) -> bytes:
    """An RT Structure Set with one square contour (voxels i0..i1, j0..j1 on slice k) on ``folder``'s series."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence

    from medsynth.dicom.series import LPS_TO_RAS

    ref = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0])
    i0, i1, j0, j1 = box
    corners = [(i0 - 0.5, j0 - 0.5), (i1 + 0.5, j0 - 0.5), (i1 + 0.5, j1 + 0.5), (i0 - 0.5, j1 + 0.5)]
    points = [LPS_TO_RAS @ affine @ np.array([i, j, k, 1.0]) for i, j in corners]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.3", pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = "RTSTRUCT", ref.PatientID, ref.PatientName
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ref.StudyInstanceUID, pydicom.uid.generate_uid()
    series, study, frame, roi, contours, contour = Dataset(), Dataset(), Dataset(), Dataset(), Dataset(), Dataset()
    series.SeriesInstanceUID = ref.SeriesInstanceUID
    study.ReferencedSOPInstanceUID, study.RTReferencedSeriesSequence = ref.StudyInstanceUID, Sequence([series])
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = ref.FrameOfReferenceUID, Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = 7, "tumour", ref.FrameOfReferenceUID
    ds.StructureSetROISequence = Sequence([roi])
    contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", 4
    contour.ContourData = [f"{v:.6f}" for p in points for v in p[:3]]
    contours.ReferencedROINumber, contours.ContourSequence = 7, Sequence([contour])
    ds.ROIContourSequence = Sequence([contours])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _slicer_style(seg) -> None:
    """As dcmqi / 3D Slicer write them: aligned frames with no DerivationImageSequence."""
    for item in seg.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence


@pytest.mark.parametrize("form", ["BINARY", "FRACTIONAL", "LABELMAP", "slicer"])
def test_a_dicom_seg_becomes_the_label_map(client: TestClient, series, store: ObjectStore, form: str) -> None:
    """Each kind of DICOM-SEG, LABELMAP (its own SOP class) included, is the series' mask, not an image of its own."""
    from medsynth.io.nifti import canonicalise

    folder, image, affine = series
    label = np.zeros(image.shape, dtype=np.uint8)
    label[4:20, 6:14, 1:4], label[22:30, 10:20, 2:5] = 1, 2
    pixels = np.stack([label == 1, label == 2], axis=-1) if form == "FRACTIONAL" else label
    seg = _seg(folder, pixels, "BINARY" if form == "slicer" else form, edit=_slicer_style if form == "slicer" else None)
    assert (pydicom.dcmread(io.BytesIO(seg)).SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7") == (form == "LABELMAP")
    files = _files(folder) + [("file", ("seg.dcm", seg, "application/dicom"))]
    r = client.post("/v1/datasets/segmented/dicom", files=files)
    assert r.status_code == 201, r.text
    (scan,) = r.json()["scans"]  # one scan: the SEG is not a series of its own
    assert scan["dicom"]["instances"] == 6 and scan["dicom"]["modality"] != "SEG"
    assert scan["label_values"] == [0, 1, 2] and scan["label_names"] == {"1": "hippocampus head", "2": "hippocampus body"}
    expected = canonicalise(image, affine, label).label
    assert np.array_equal(_canonical(store, scan["label_key"]), expected)
    assert load_manifest(store, "segmented").scans[0].dicom.mask == "DICOM-SEG"


def _two_series(seg) -> None:
    from pydicom.dataset import Dataset

    other = Dataset()
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.ReferencedInstanceSequence = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    seg.ReferencedSeriesSequence.append(other)


@pytest.mark.parametrize("case", ["no-series", "two-series", "overlap"])
def test_unusable_segs_leave_their_images_stored_unlabeled(client: TestClient, series, store: ObjectStore, case: str) -> None:
    """A SEG whose series never arrives is refused (422, nothing stored); one that references two series
    and overlapping segments (the default rule refuses them) cost only the label map: the images are
    stored unlabeled (207), the SEG's reason the series' warning."""
    folder, image, _ = series
    label = np.zeros(image.shape, dtype=np.uint8)
    label[4:20, 6:14, 1:4], label[22:30, 10:20, 2:5] = 1, 2
    files = _files(folder)
    if case == "no-series":
        files, seg = [], _seg(folder, label)
        match = r"seg\.dcm \(DICOM-SEG\) references series [0-9.]+, which is not here: send the images with their mask"
    elif case == "two-series":
        seg = _seg(folder, label, edit=_two_series)
        match = r"seg\.dcm \(DICOM-SEG\) references 2 series .*send one SEG per series"
    elif case == "overlap":
        one, two = label == 1, label == 2
        two[10:20, 8:12, 2:4] = True
        seg = _seg(folder, np.stack([one, two], axis=-1))
        match = r"seg\.dcm \(DICOM-SEG\): segments 1 \('hippocampus head'\) and 2 \('hippocampus body'\) overlap"
    r = client.post("/v1/datasets/badseg/dicom", files=files + [("file", ("seg.dcm", seg, "application/dicom"))])
    if case == "no-series":
        assert r.status_code == 422, r.text
        assert re.search(match, r.json()["detail"]), r.json()["detail"]
        assert r.json()["series"][0]["fate"] == "refused" and r.json()["series"][0]["files"] == ["seg.dcm"]
        assert not list(store.list("datasets/badseg/"))
        return
    assert r.status_code == 207, r.text
    (outcome,) = r.json()["series"]
    assert outcome["fate"] == "stored-unlabeled" and outcome["files"][-1] == "seg.dcm" and outcome["instances"] == 7, outcome
    (warning,) = outcome["warnings"]
    assert warning.startswith("mask not used, the series is stored unlabeled: ") and re.search(match, warning), warning
    assert "RuntimeError" not in warning and "highdicom" not in warning
    (scan,) = r.json()["scans"]
    assert scan["label_key"] is None and scan["dicom"]["mask"] is None and scan["dicom"]["instances"] == 6
    assert not [k for k in store.list("datasets/badseg/") if k.endswith("mask.dcm")]  # the unused SEG is not stored
    (record,) = client.get("/v1/datasets/badseg/dicom/series").json()["series"]
    assert record["fate"] == "stored-unlabeled" and record["scan_id"] == scan["scan_id"], record
    assert re.search(match.replace(r"seg\.dcm", r"instance 1 of series 99"), record["warnings"][0]), record  # named as sent
    assert "1.2.826.0.1.3680043" not in record["warnings"][0]  # the series a SEG references, by their de-identified UIDs


def test_a_seg_of_some_slices_is_stored_with_its_coverage_and_views_flag_the_rest_unlabeled(
        client: TestClient, series, store: ObjectStore) -> None:
    """A SEG drawn on slices 1-3 of 6: the label map is stored with the scan's coverage (the slices it
    says anything about), the series' warning names the others; a view keeps those slices flagged
    unlabeled (listed as partly labeled: jobs that need masks refuse it), or leaves them out."""
    from medsynth.datasets.views import load_view_split, parse_view
    from medsynth.handlers.prepare import prepare_dataset
    from medsynth.io.nifti import canonicalise
    from medsynth.v1 import jobs_pb2

    folder, image, affine = series
    label = np.zeros(image.shape, dtype=np.uint8)
    label[4:20, 6:14, 1:4], label[22:30, 10:20, 2:4] = 1, 2
    seg = _seg(folder, label, slices=slice(1, 4))
    r = client.post("/v1/datasets/partial/dicom", files=_files(folder) + [("file", ("seg.dcm", seg, "application/dicom"))])
    assert r.status_code == 201, r.text
    (outcome,) = r.json()["series"]
    (warning,) = outcome["warnings"]
    assert outcome["fate"] == "stored" and re.search(r"labels 3 of the 6 slices of its series; slices 0, 4–5 .* are unlabeled, not "
                                                     r"background: they are stored as such", warning), warning
    (entry,) = load_manifest(store, "partial").scans
    covered = np.zeros(image.shape, np.uint8)
    covered[:, :, 1:4] = 1
    assert np.array_equal(_canonical(store, entry.coverage_key), canonicalise(image, affine, covered).label)
    assert np.array_equal(_canonical(store, entry.label_key), canonicalise(image, affine, label).label)

    class Ctx:
        settings = Settings(inception_weights=None)

        def __init__(self) -> None:
            self.store = store

        def progress(self, fraction: float, message: str = "") -> None:
            pass

    views = {}
    for unlabeled in ("include", "exclude"):
        command = jobs_pb2.PrepareDataset(dataset="partial", version=load_manifest(store, "partial").version, mode=jobs_pb2.SLICES_2D, size=32, axis=2,
                                          val_fraction=0.0, test_fraction=0.0, seed=0, keep_empty=True, keep_empty_eval=True,
                                          unlabeled=unlabeled)  # fmt: skip
        key = prepare_dataset(command, Ctx())["view"]
        views[unlabeled] = parse_view(store.get_json(key), key)
    canonical_covered = canonicalise(image, affine, covered).label.astype(bool)
    slice_known = [bool(canonical_covered[:, :, k].all()) for k in range(canonical_covered.shape[2])]
    train = load_view_split(store, views["include"], "train")
    assert train["labeled"].tolist() == [slice_known[i] for i in train["index"]] and sum(slice_known) == 3
    assert views["include"].partially_labeled_scans.train == [entry.scan_id] and views["include"].labeled.train == 3
    assert "1 partly labeled in its train split" in views["include"].unlabeled_problem(("train",), "a generator")
    assert views["exclude"].counts.train == 3 and views["exclude"].excluded_items == 3
    assert views["exclude"].unlabeled_problem(("train",), "a generator") is None


def test_an_rtstruct_is_rasterised_onto_the_series(client: TestClient, series, store: ObjectStore) -> None:
    from medsynth.io.nifti import canonicalise

    folder, image, affine = series
    files = _files(folder) + [("file", ("rt.dcm", _rtstruct(folder, affine, (5, 15, 4, 10), 2), "application/dicom"))]
    r = client.post("/v1/datasets/contoured/dicom", files=files)
    assert r.status_code == 201, r.text
    (scan,) = r.json()["scans"]
    assert scan["label_names"] == {"1": "roi 7"}  # ROI Name is free text: the basic profile empties it
    label = np.zeros(image.shape, dtype=np.uint8)
    label[5:16, 4:11, 2] = 1
    assert np.array_equal(_canonical(store, scan["label_key"]), canonicalise(image, affine, label).label)


def test_an_rtstruct_without_its_series_is_refused(client: TestClient, series, store: ObjectStore) -> None:
    folder, _, affine = series
    r = client.post("/v1/datasets/orphan/dicom", files=[("file", ("rt.dcm", _rtstruct(folder, affine, (5, 15, 4, 10), 2), "application/dicom"))])
    assert r.status_code == 422 and "rt.dcm (RTSTRUCT) references series" in r.json()["detail"], r.text
    assert not list(store.list("datasets/orphan/"))


def test_project_options_and_the_key_that_links_pseudonyms_back(platform_settings: Settings, tmp_path: Path, store: ObjectStore) -> None:
    """A project that retains (shifted) dates and accepts possible burned-in text; the hospital's key,
    printed by `medsynth projects deid-key`, recomputes the pseudonym of its patient."""
    import hashlib
    import hmac
    import sys

    from medsynth.store.projects import DicomOptions, Projects
    from platform_fixtures import settings_env

    Projects(store).create("hosp", dicom=DicomOptions(retain_dates=True, allow_burned_in=True))
    image, affine = phantom(shape=(40, 36, 3))
    folder = tmp_path / "us"
    write_series(folder, image, affine, identity=IDENTITY, edit=lambda ds, k: setattr(ds, "BurnedInAnnotation", "YES"))
    with TestClient(create_ingest_app(platform_settings), headers=bearer(platform_settings, "uploader", project="hosp")) as c:
        r = c.post("/v1/datasets/kept/dicom", files=_files(folder))
    assert r.status_code == 201 and r.json()["quarantined"] == [], r.text
    scan = r.json()["scans"][0]
    first_key = sorted(store.list("projects/hosp/" + scan["original_image_key"]))[0]  # the project's part of the store
    instance = pydicom.dcmread(io.BytesIO(store.get_bytes(first_key)))
    assert [c.CodeValue for c in instance.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert instance.StudyDate and instance.StudyDate != "20190305"  # shifted, not removed
    printed = subprocess.run([sys.executable, "-m", "medsynth.local.cli", "projects", "deid-key", "hosp"], env=settings_env(platform_settings),
                             capture_output=True, text=True, check=True).stdout.strip()
    linked = "P" + hmac.new(bytes.fromhex(printed), b"patient\x00HOSP-778899", hashlib.sha256).hexdigest()[:20]
    assert linked == scan["patient_id"]


# --- time series and Siemens mosaics ---------------------------------------------------------------

MOSAIC_IDENTITY = SeriesIdentity("HOSP-778899", "Smith^Alice", series_description="bold Smith", series_number=7,
                                 manufacturer="SIEMENS", extra={"InstitutionName": "St Example Hospital"})


def _mosaics(folder: Path, *, times: int = 3, csa: bool = True) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """A Siemens fMRI-like series: ``times`` mosaics of 7 slices (3x3 tiles), time point t holding image + t."""
    image, affine = phantom(shape=(12, 10, 7))
    return image, affine, write_mosaics(folder, mosaic_series(image, affine, times=times, csa=csa, identity=MOSAIC_IDENTITY))


@pytest.mark.parametrize("option", ["refuse", "first", "split"])
def test_a_time_series_follows_the_project_option(platform_settings: Settings, tmp_path: Path, store: ObjectStore, option: str) -> None:
    """Three mosaics of one series (three time points): refused, the first kept, or one scan each; every
    stored original is a de-identified mosaic that still unpacks (its CSA header cut down to the numbers)."""
    from medsynth.io.nifti import canonicalise
    from medsynth.store.projects import DicomOptions, Projects, project_store

    Projects(store).create("fmri", dicom=DicomOptions(time_series=option))
    image, affine, _ = _mosaics(tmp_path / "bold")
    with TestClient(create_ingest_app(platform_settings), headers=bearer(platform_settings, "uploader", project="fmri")) as c:
        r = c.post("/v1/datasets/bold/dicom", files=_files(tmp_path / "bold"))
    if option == "refuse":
        assert r.status_code == 422, r.text
        assert "series 7 is a time series (3 time points), which this project refuses" in r.json()["detail"], r.text
        assert not list(store.list("projects/fmri/datasets/bold/"))
        return
    assert r.status_code == 201, r.text
    scans = r.json()["scans"]
    assert len(scans) == (1 if option == "first" else 3)
    for t, scan in enumerate(scans):
        assert scan["dicom"]["time_point"] == t and scan["dicom"]["time_points"] == 3 and scan["dicom"]["instances"] == 1
        assert np.array_equal(_canonical(store, "projects/fmri/" + scan["image_key"]), canonicalise(image + t, affine).image)
        (key,) = store.list("projects/fmri/" + scan["original_image_key"])
        stored = tmp_path / f"stored-{t}"
        stored.mkdir()
        (stored / "0000.dcm").write_bytes(store.get_bytes(key))
        assert np.array_equal(read_folder(stored).image, canonicalise(image + t, affine).image)
        instance = pydicom.dcmread(stored / "0000.dcm")
        assert [c.CodeValue for c in instance.DeidentificationMethodCodeSequence] == ["113100", "113111"]
    manifest = load_manifest(project_store(store, "fmri"), "bold")
    assert [e.original_filename for e in manifest.scans] == [f"series 7-t{t:03d}" for t in range(len(scans))]
    assert_no_identifier_stored(store)


def test_a_mosaic_without_its_csa_header_is_refused_and_nothing_is_stored(client: TestClient, tmp_path: Path, store: ObjectStore) -> None:
    _mosaics(tmp_path / "bold", times=1, csa=False)
    r = client.post("/v1/datasets/bold/dicom", files=_files(tmp_path / "bold"))
    assert r.status_code == 422, r.text
    assert re.search(r"series 7: 0000.dcm is a Siemens mosaic .* without its CSA image header", r.json()["detail"]), r.text
    assert not list(store.list("datasets/bold/"))


def test_staged_mosaics_are_split_on_commit(store: ObjectStore, tmp_path: Path) -> None:
    """The staged path (STOW-RS, C-STORE) reads staged instances for their geometry only: the CSA header
    is part of it. Committed under 'split', the series' record names every scan."""
    from medsynth.datasets.dicom_ingest import receive
    from medsynth.datasets.dicom_staging import commit, stage
    from medsynth.datasets.manifest import load_manifest
    from medsynth.dicom.deid import DeidPolicy, Deidentifier
    from medsynth.dicom.series import read_instance

    deid = Deidentifier(DeidPolicy(b"k" * 32))
    _, _, paths = _mosaics(tmp_path / "bold")
    for path in reversed(paths):
        stage(store, "bold", receive(read_instance(path.read_bytes(), path.name), path.name, deid), source="test")
    (record,) = commit(store, "bold", max_voxels=10**8, time_series="split")
    assert record.state == "ingested", record.reason
    assert len(record.scan_ids) == 3 and record.scan_id == record.scan_ids[0]
    assert [s.scan_id for s in load_manifest(store, "bold").scans] == record.scan_ids
    assert [s.dicom.time_point for s in load_manifest(store, "bold").scans] == [0, 1, 2]


def test_a_4d_nifti_follows_the_same_option(platform_settings: Settings, client: TestClient, store: ObjectStore) -> None:
    """The NIfTI route reads the project's time_series too: the default refuses a 4D image, 'first'
    keeps its first time point (the 4D file is the scan's original)."""
    from medsynth.store.projects import DicomOptions, Projects

    image, affine = phantom(shape=(12, 10, 7))
    series = np.stack([image, image + 1], axis=-1)
    data = gzip.compress(nib.Nifti1Image(series, affine).to_bytes())
    form = {"data": {"patient_id": "p1"}, "files": {"image": ("bold.nii.gz", data, "application/octet-stream")}}
    r = client.post("/v1/datasets/bold/scans", **form)
    assert r.status_code == 422 and "a 4D NIfTI is a time series (2 time points" in r.json()["detail"], r.text
    Projects(store).create("fmri", dicom=DicomOptions(time_series="first"))
    with TestClient(create_ingest_app(platform_settings), headers=bearer(platform_settings, "uploader", project="fmri")) as c:
        r = c.post("/v1/datasets/bold/scans", **form)
    assert r.status_code == 201, r.text
    from medsynth.io.nifti import canonicalise
    assert np.array_equal(_canonical(store, "projects/fmri/" + r.json()["image_key"]), canonicalise(image, affine).image)


# --- per-series outcomes: a bad series costs only itself, on every way in ------------------------------


def _patient_with_a_bad_series(tmp_path: Path, series) -> tuple[list, Path, Path]:
    """The ``series`` fixture's series (3, 6 slices) and, of the same patient, a Siemens mosaic without its
    CSA header (series 7): the upload's files, named by folder."""
    folder, _, _ = series
    _mosaics(tmp_path / "bold", times=1, csa=False)
    return _files(folder, "t1/") + _files(tmp_path / "bold", "bold/"), folder, tmp_path / "bold"


def _overlapping_seg(folder: Path, image: np.ndarray) -> bytes:
    one = np.zeros(image.shape, dtype=bool)
    one[4:20, 6:14, 1:4] = True
    two = one.copy()  # the same voxels: overlapping segments, refused under the default rule
    return _seg(folder, np.stack([one, two], axis=-1))


MOSAIC_REFUSED = r"series 7: {name} is a Siemens mosaic .* without its CSA image header"
OVERLAP = r"{name} \(DICOM-SEG\): segments 1 \('hippocampus head'\) and 2 \('hippocampus body'\) overlap"


def test_rest_stores_the_good_series_and_reports_each_other_one(client: TestClient, series, store: ObjectStore,
                                                                  tmp_path: Path) -> None:
    """One patient: a good series, a mosaic without its CSA header, a file that is not DICOM. The good
    series is stored (207); the others are reported, named by the files sent; GET …/dicom/series lists
    both series with their fates, naming instances by number (no file name, no SeriesDescription stored)."""
    files, folder, _ = _patient_with_a_bad_series(tmp_path, series)
    files.append(("file", ("notes.txt", b"not an image", "text/plain")))
    r = client.post("/v1/datasets/mixed/dicom", files=files)
    assert r.status_code == 207, r.text
    good, bold, notes = r.json()["series"]
    assert good["fate"] == "stored" and good["files"] == [f"t1/{k:04d}.dcm" for k in range(6)] and good["series_number"] == 3
    assert good["series_description"] == "T1 brain Smith" and good["scan_ids"] == [r.json()["scans"][0]["scan_id"]]
    assert bold["fate"] == "refused" and bold["files"] == ["bold/0000.dcm"] and bold["modality"] == "MR", bold
    assert re.search(MOSAIC_REFUSED.format(name="bold/0000.dcm"), bold["reason"]), bold
    assert notes == {**notes, "fate": "refused", "series_instance_uid": None, "files": ["notes.txt"]}, notes
    assert "notes.txt is not a DICOM file" in notes["reason"]
    assert r.json()["counts"] == {"stored": 1, "stored-unlabeled": 0, "quarantined": 0, "refused": 2, "already-present": 0}
    (scan,) = r.json()["scans"]
    assert np.array_equal(_canonical(store, scan["image_key"]), read_folder(folder).image)
    assert [e.scan_id for e in load_manifest(store, "mixed").scans] == [scan["scan_id"]]
    listed = {s["series_number"]: s for s in client.get("/v1/datasets/mixed/dicom/series").json()["series"]}
    assert (listed[3]["state"], listed[3]["fate"], listed[3]["source"]) == ("ingested", "stored", "upload"), listed[3]
    assert listed[3]["scan_id"] == scan["scan_id"]
    assert (listed[7]["state"], listed[7]["fate"]) == ("rejected", "refused"), listed[7]
    assert re.search(MOSAIC_REFUSED.format(name="instance 1 of series 7"), listed[7]["reason"]), listed[7]
    refused = client.get("/v1/datasets/mixed/dicom/series", params={"fate": "refused"}).json()["series"]
    assert [s["series_number"] for s in refused] == [7]
    assert_no_identifier_stored(store)
    assert not [k for k in store.list("") if b"bold Smith" in store.get_bytes(k)]


def test_stow_rs_fails_what_it_cannot_store_instead_of_acknowledging_it(live, series, store: ObjectStore, tmp_path: Path) -> None:
    """One STOW-RS request with a good series and a mosaic without its CSA header: the mosaic fails (0110)
    and its series is recorded rejected at once; the good one is acknowledged and stored on commit."""
    import httpx
    from dicomweb_client.api import DICOMwebClient

    url, auth = live
    _, folder, bold = _patient_with_a_bad_series(tmp_path, series)
    client = DICOMwebClient(f"{url}/v1/datasets/stowed/dicomweb", headers=auth)
    sent = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm")) + sorted(bold.glob("*.dcm"))]
    response = client.store_instances(sent)
    assert len(response.ReferencedSOPSequence) == 6 and all("WarningReason" not in i for i in response.ReferencedSOPSequence)
    (failed,) = response.FailedSOPSequence
    assert failed.FailureReason == 0x0110
    listed = {s["series_number"]: s for s in httpx.get(f"{url}/v1/datasets/stowed/dicom/series", headers=auth).json()["series"]}
    assert (listed[3]["state"], listed[3]["fate"], listed[3]["instances"]) == ("staged", None, 6), listed
    assert (listed[7]["state"], listed[7]["fate"], listed[7]["source"]) == ("rejected", "refused", "stow-rs"), listed
    assert re.search(MOSAIC_REFUSED.format(name="instance 1 of series 7"), listed[7]["reason"]), listed[7]
    done = httpx.post(f"{url}/v1/datasets/stowed/dicom/commit", headers=auth).json()["series"]
    assert [(s["series_number"], s["fate"]) for s in done] == [(3, "stored")], done
    assert not list(store.list("dicom/staging/"))
    assert_no_identifier_stored(store)


def test_stow_rs_acknowledges_an_incomplete_series_with_a_warning(live, series, store: ObjectStore) -> None:
    """A series sent without its middle slice: staged, but each instance carries WarningReason B000 and
    the Warning header says why; the missing slice in a second request completes it."""
    import httpx

    url, auth = live
    folder, _, _ = series
    paths = sorted(folder.glob("*.dcm"))

    def stow(parts: list[Path]) -> httpx.Response:
        body = b"".join(b"--b\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes() + b"\r\n" for p in parts) + b"--b--\r\n"
        return httpx.post(f"{url}/v1/datasets/late/dicomweb/studies", content=body, timeout=30,
                          headers={**auth, "content-type": 'multipart/related; type="application/dicom"; boundary=b'})

    r = stow(paths[:3] + paths[4:])
    assert r.status_code == 202, r.text
    assert [i["00081196"]["Value"] for i in r.json()["00081199"]["Value"]] == [[0xB000]] * 5 and "00081198" not in r.json()
    assert "series 3: staged, but it cannot be stored as it stands (series 3: a missing slice" in r.headers["warning"], r.headers
    r = stow([paths[3]])
    assert r.status_code == 200 and "warning" not in r.headers, r.text
    (done,) = httpx.post(f"{url}/v1/datasets/late/dicom/commit", headers=auth).json()["series"]
    assert (done["fate"], done["instances"]) == ("stored", 6), done


def test_stow_rs_an_unusable_seg_fails_and_its_series_is_stored_unlabeled(live, series, store: ObjectStore) -> None:
    import httpx
    from dicomweb_client.api import DICOMwebClient

    url, auth = live
    folder, image, _ = series
    seg = pydicom.dcmread(io.BytesIO(_overlapping_seg(folder, image)))
    client = DICOMwebClient(f"{url}/v1/datasets/segs/dicomweb", headers=auth)
    response = client.store_instances([pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))] + [seg])
    assert len(response.ReferencedSOPSequence) == 6
    (failed,) = response.FailedSOPSequence
    assert failed.FailureReason == 0x0110 and failed.ReferencedSOPClassUID == seg.SOPClassUID
    (done,) = httpx.post(f"{url}/v1/datasets/segs/dicom/commit", headers=auth).json()["series"]
    assert (done["state"], done["fate"], done["series_number"], done["modality"]) == ("ingested", "stored-unlabeled", 3, "MR"), done
    (warning,) = done["warnings"]
    assert re.search(OVERLAP.format(name="instance 1 of series 99"), warning), warning  # not the staged file's name
    (entry,) = load_manifest(store, "segs").scans
    assert entry.label_key is None and entry.dicom.instances == 6


def test_stow_rs_quarantines_a_whole_series(live, tmp_path: Path, store: ObjectStore) -> None:
    """One instance that may show identity: it and the rest of its series fail (409, nothing of it kept);
    GET …/dicom/series lists the series as quarantined, before and after it is decided."""
    import httpx
    from dicomweb_client.api import DICOMwebClient
    from requests import HTTPError

    url, auth = live
    image, affine = phantom(shape=(40, 36, 3))
    folder = tmp_path / "burned"
    write_series(folder, image, affine, identity=IDENTITY, edit=lambda ds, k: setattr(ds, "BurnedInAnnotation", "YES" if k == 1 else "NO"))
    client = DICOMwebClient(f"{url}/v1/datasets/burned/dicomweb", headers=auth)
    with pytest.raises(HTTPError, match="409"):
        client.store_instances([pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))])
    (staged,) = httpx.get(f"{url}/v1/datasets/burned/dicom/series", headers=auth).json()["series"]
    assert (staged["state"], staged["fate"]) == ("staged", "quarantined"), staged
    assert staged["reason"].startswith("instance 2 of series 3 may show identifying text"), staged
    (done,) = httpx.post(f"{url}/v1/datasets/burned/dicom/commit", headers=auth).json()["series"]
    assert (done["state"], done["fate"]) == ("quarantined", "quarantined"), done
    assert not list(store.list("dicom/staging/")) and not list(store.list("datasets/burned/"))
    assert_no_identifier_stored(store)


def test_c_store_series_are_decided_one_by_one_and_all_listed(platform_settings: Settings, series, store: ObjectStore,
                                                              tmp_path: Path) -> None:
    """storescu pushes a patient's four series: one good, one with an overlapping SEG, a mosaic without its
    CSA header, one with an instance that may show identity. Once quiet: stored, stored unlabeled (the
    SEG's reason naming it as sent), refused, quarantined — every one in GET …/dicom/series."""
    import time

    folder, image, affine = series
    seg = tmp_path / "seg" / "seg.dcm"
    seg.parent.mkdir()
    seg.write_bytes(_overlapping_seg(folder, image))
    _mosaics(tmp_path / "bold", times=1, csa=False)
    other = SeriesIdentity("HOSP-778899", "Smith^Alice", series_description="T2", series_number=4)
    write_series(tmp_path / "t2", *phantom(shape=(20, 16, 3), seed=2), identity=other)
    burned = SeriesIdentity("HOSP-778899", "Smith^Alice", series_description="scout", series_number=5)
    write_series(tmp_path / "burned", *phantom(shape=(20, 16, 3), seed=3), identity=burned,
                 edit=lambda ds, k: setattr(ds, "BurnedInAnnotation", "YES" if k == 1 else "NO"))
    files = [*sorted(folder.glob("*.dcm")), seg, *sorted((tmp_path / "bold").glob("*.dcm")), *sorted((tmp_path / "t2").glob("*.dcm")),
             *sorted((tmp_path / "burned").glob("*.dcm"))]
    port = _free_port()
    settings = platform_settings.model_copy(update={
        "dicom_port": port, "dicom_ae_title": "MEDSYNTH", "dicom_quiet_s": 1.0,
        "dicom_peers": [DicomPeer(ae_title="HOSPPACS", dataset="pushed")],
    })
    with TestClient(create_ingest_app(settings), headers=bearer(settings, "uploader")) as client:
        # -R: propose the files' SOP classes (the SEG's too); -nh: go on after a failed store
        sent = subprocess.run([tool("storescu"), "-v", "-R", "-nh", "-aet", "HOSPPACS", "-aec", "MEDSYNTH", "127.0.0.1", str(port),
                               *map(str, files)], capture_output=True, text=True)
        out = sent.stdout + sent.stderr
        assert out.count("Received Store Response (Error") >= 2, out  # the flagged instance, and the one after it
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = client.get("/v1/datasets/pushed/dicom/series").json()["series"]
            if len(listed) == 4 and all(s["state"] != "staged" for s in listed):
                break
            time.sleep(0.5)
    fates = {s["series_number"]: (s["state"], s["fate"]) for s in listed}
    assert fates == {3: ("ingested", "stored-unlabeled"), 7: ("rejected", "refused"), 4: ("ingested", "stored"),
                     5: ("quarantined", "quarantined")}, listed
    by_number = {s["series_number"]: s for s in listed}
    assert re.search(OVERLAP.format(name="instance 1 of series 99"), by_number[3]["warnings"][0]), by_number[3]
    assert re.search(MOSAIC_REFUSED.format(name="instance 1 of series 7"), by_number[7]["reason"]), by_number[7]
    assert by_number[5]["reason"].startswith("instance 2 of series 5 may show identifying text"), by_number[5]
    assert len(load_manifest(store, "pushed").scans) == 2
    assert not list(store.list("dicom/staging/"))
    assert_no_identifier_stored(store)
