"""Cohorts out as DICOM: each sample a DICOM image with an unmistakably synthetic identity and its mask
a DICOM-SEG referencing it; read back by pydicom and highdicom, converted by dcm2niix to the same voxels."""

from __future__ import annotations

import glob
import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom

from medsynth.dicom.export import CohortIdentity
from medsynth.dicom.series import assemble_series
from medsynth.io.nifti import canonicalise, load_nifti
from medsynth.sampling.backends import InProcessSampler
from medsynth.sampling.cohort import read_manifest, write_cohort
from medsynth.store.local import LocalStore
from sampling_helpers import PROVENANCE

PREFIX = "cohorts/c-dicom/"
WHO = CohortIdentity(cohort_id="c-dicom-0001", generator_id="g-123456789abc", family="joint-gan", modality="MR",
                     label_names=((1, "hippocampus head"),))


def test_a_dicom_cohort_reads_back_and_converts_to_the_same_voxels(store: LocalStore, in_process: InProcessSampler, tmp_path: Path) -> None:
    write_cohort(store, PREFIX, in_process, count=3, seed=4, batch_size=2, provenance=PROVENANCE, formats=("nifti", "dicom"), dicom=WHO)
    manifest = read_manifest(store, PREFIX)
    assert manifest["formats"] == ["nifti", "dicom"]
    uids = set()
    for entry in manifest["samples"]:
        image_bytes = store.get_bytes(entry["dicom"]["image"]["key"])
        seg_bytes = store.get_bytes(entry["dicom"]["seg"]["key"])
        image = pydicom.dcmread(io.BytesIO(image_bytes))
        assert str(image.PatientName) == "SYNTHETIC^c-dicom-0001" and image.PatientID == f"SYN-c-dicom-0001-{entry['index']:05d}"
        assert list(image.ImageType)[:2] == ["DERIVED", "SECONDARY"] and image.BurnedInAnnotation == "NO"
        assert "g-123456789a" in image.SeriesDescription and "c-dicom-0001" in image.DerivationDescription
        assert image.Modality == "MR"
        uids.add(image.StudyInstanceUID)
        seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(seg_bytes)))
        assert seg.SegmentSequence[0].SegmentLabel == "hippocampus head"
        mask = seg.get_pixels_by_source_instance([image.SOPInstanceUID], combine_segments=True)[0]
        nifti_label = np.asanyarray(load_nifti(store.get_bytes(entry["label"]["key"]), what="label", max_voxels=10**7).dataobj)
        assert np.array_equal(mask.T, nifti_label)  # the SEG holds the cohort's mask, referenced to its image

        folder = tmp_path / f"s{entry['index']}"
        folder.mkdir()
        (folder / "image.dcm").write_bytes(image_bytes)
        out = tmp_path / f"o{entry['index']}"
        out.mkdir()
        subprocess.run([shutil.which("dcm2niix"), "-b", "n", "-z", "n", "-o", str(out), "-f", "x", str(folder)], check=True,
                       capture_output=True)
        (converted,) = glob.glob(str(out / "*.nii"))
        ref = nib.load(converted)
        ours = canonicalise(np.asarray(ref.dataobj, dtype=np.float32).reshape(ref.shape[:2]), ref.affine)
        stored = load_nifti(store.get_bytes(entry["image"]["key"]), what="image", max_voxels=10**7)
        sample = canonicalise(np.asanyarray(stored.dataobj).astype(np.float32), stored.affine)
        slope, intercept = float(image.RescaleSlope), float(image.RescaleIntercept)
        # the same stored integers as dcm2niix (its NIfTI header keeps the slope only as float32, so the
        # comparison applies the DICOM's own slope to both)
        unscaled = np.asarray(ref.dataobj.get_unscaled(), dtype=np.float64).reshape(ref.shape[:2])
        d2n = canonicalise((unscaled * slope + intercept).astype(np.float32), ref.affine)
        read = assemble_series([("image.dcm", image)], max_voxels=10**7)
        assert np.array_equal(read.image, d2n.image) and np.allclose(read.affine, d2n.affine, atol=1e-4)
        assert np.abs(ours.image - sample.image).max() <= slope  # 16-bit storage of a float image: within one step
        assert np.allclose(ours.affine, sample.affine, atol=1e-4)
    assert len(uids) == 3  # fresh UIDs per sample
    for part in ("image", "seg"):  # the IOD checker of dicom3tools finds no error in either object
        path = tmp_path / f"check-{part}.dcm"
        path.write_bytes(store.get_bytes(manifest["samples"][0]["dicom"][part]["key"]))
        checked = subprocess.run([shutil.which("dciodvfy"), str(path)], capture_output=True, text=True)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert not errors, errors


def test_a_dicom_cohort_is_sent_to_a_real_storescp(platform_settings, in_process: InProcessSampler, tmp_path: Path) -> None:
    """POST /v1/cohorts/{id}/send: C-STORE to dcmtk's storescp, started here; only listed destinations."""
    import socket
    import time

    from fastapi.testclient import TestClient

    from medsynth.api.app import create_api_app
    from medsynth.bus.messages import JobKind
    from medsynth.core.settings import DicomNode
    from medsynth.jobs.records import JobRecord, JobRecords, JobState
    from platform_fixtures import bearer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen([shutil.which("storescp"), "-aet", "VIEWER", "-od", str(received), "--accept-all", str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        store = LocalStore(platform_settings.local_store_root)
        job_id = "sample-cohort-dicom01"
        key = write_cohort(store, f"cohorts/{job_id}/", in_process, count=2, seed=1, batch_size=2, provenance=PROVENANCE,
                           formats=("dicom",), dicom=WHO)
        JobRecords(store).put(JobRecord(job_id=job_id, kind=JobKind.sample_cohort, spec={}, state=JobState.succeeded,
                                        result_keys={"manifest": key}))
        settings = platform_settings.model_copy(update={"dicom_destinations": [DicomNode(ae_title="VIEWER", host="127.0.0.1", port=port)]})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # storescp binds its port
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        with TestClient(create_api_app(settings, reconcile=False), headers=bearer(settings, "researcher")) as api:
            elsewhere = api.post(f"/v1/cohorts/{job_id}/send", json={"host": "10.1.2.3", "port": port, "ae_title": "VIEWER"})
            assert elsewhere.status_code == 403, elsewhere.text
            r = api.post(f"/v1/cohorts/{job_id}/send", json={"host": "127.0.0.1", "port": port, "ae_title": "VIEWER"})
            assert r.status_code == 200, r.text
            assert r.json()["sent"] == 4 and r.json()["failed"] == []
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    files = sorted(received.iterdir())
    assert len(files) == 4
    kinds = sorted(pydicom.dcmread(f).Modality for f in files)
    assert kinds == ["MR", "MR", "SEG", "SEG"]
    assert all(str(pydicom.dcmread(f).PatientName) == "SYNTHETIC^c-dicom-0001" for f in files)
