"""Interchange with nnU-Net: a v2 raw folder (single channel, named labels) ingested through the
ingest service, multi-channel folders refused case by case, and a cohort — with the real training
slices of its view — exported as a raw dataset that nnunetv2's own integrity check accepts.

nnunetv2 comes from requirements-tools.lock (`make install`); the export test fails, not skips,
without it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from medsynth.api.app import create_ingest_app
from medsynth.bus.messages import JobKind
from medsynth.core.errors import Conflict, InvalidInput, NotFound
from medsynth.datasets.ingest import Upload, ingest_scan, parse_label_names
from medsynth.datasets.manifest import load_manifest
from medsynth.datasets.phantoms import write_phantom_dataset
from medsynth.datasets.views import build_views, load_view
from medsynth.io.nifti import load_nifti, to_nifti_bytes
from medsynth.io.nnunet import label_table, nnunet_case, raw_cases, read_dataset_json
from medsynth.jobs.records import JobRecord, JobRecords, JobState, new_job_id
from medsynth.local.cli import main
from medsynth.local.ingest_client import find_cases, ingest_folder
from medsynth.local.nnunet_export import export_cohort
from medsynth.sampling.cohort import geometry_section, sample_nifti_bytes
from medsynth.store import ObjectStore
from medsynth.store.local import LocalStore

from platform_fixtures import api_key, live_server

SHAPE, SIZE = (24, 24, 6), 16
V2_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1, "lesion": 2}, "numTraining": 3,
           "file_ending": ".nii.gz"}


def _v2_folder(root: Path, n: int = 3, dataset_json: dict | None = V2_JSON) -> list[str]:
    """Phantoms in nnU-Net v2's layout: ``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``."""
    names = write_phantom_dataset(root, n=n, seed=3, shape=SHAPE)
    for name in names:
        (root / "imagesTr" / f"{name}.nii.gz").rename(root / "imagesTr" / f"{name}_0000.nii.gz")
    (root / "dataset.json").unlink()
    if dataset_json is not None:
        (root / "dataset.json").write_text(json.dumps(dataset_json))
    return names


# --- import ----------------------------------------------------------------------------------------


def test_a_v2_raw_folder_is_ingested_with_its_label_names(platform_settings, tmp_path: Path, store: ObjectStore) -> None:
    names = _v2_folder(tmp_path / "Dataset004_Phantoms")
    with live_server(create_ingest_app(platform_settings)) as url:
        summary = ingest_folder(tmp_path / "Dataset004_Phantoms", "ph", url, api_key=api_key(platform_settings, "uploader"),
                                progress=False)
    assert sorted(summary.accepted) == names and summary.as_sent, summary.lines()
    manifest = load_manifest(store, "ph")
    assert sorted(manifest.patients) == names  # the case, not its channel file, is the patient
    for scan in manifest.scans:
        assert scan.label_key is not None and scan.original_filename.endswith("_0000.nii.gz")
        assert scan.label_names == {v: {1: "organ", 2: "lesion"}[v] for v in scan.label_values if v}, scan
    assert any(scan.label_names == {1: "organ", 2: "lesion"} for scan in manifest.scans)


def test_channel_files_are_gathered_by_case_even_without_a_dataset_json(tmp_path: Path) -> None:
    names = _v2_folder(tmp_path / "raw", dataset_json=None)
    cases = find_cases(tmp_path / "raw")
    assert [(c.name, c.patient_id, c.image.name, c.label.name) for c in cases] == [
        (n, n, f"{n}_0000.nii.gz", f"{n}.nii.gz") for n in names]
    assert all(c.refused is None and not c.label_names for c in cases)


def test_a_two_channel_dataset_is_refused_case_by_case(tmp_path: Path) -> None:
    """Nothing is sent (no server here): every case is rejected with the reason."""
    root = tmp_path / "Dataset005_Prostate"
    names = _v2_folder(root, dataset_json={**V2_JSON, "channel_names": {"0": "T2", "1": "ADC"}})
    for name in names:
        (root / "imagesTr" / f"{name}_0001.nii.gz").write_bytes((root / "imagesTr" / f"{name}_0000.nii.gz").read_bytes())
    summary = ingest_folder(root, "prostate", "http://127.0.0.1:9", api_key="unused", progress=False)
    assert not summary.accepted and not summary.failed and set(summary.rejected) == set(names)
    assert all(r.startswith("dataset.json declares 2 channels (T2, ADC): each case is one image per channel")
               for r in summary.rejected.values()), summary.rejected
    # a dataset.json of one channel, and one case with a second channel file: that case alone is refused
    (root / "dataset.json").write_text(json.dumps(V2_JSON))
    for name in names[1:]:
        (root / "imagesTr" / f"{name}_0001.nii.gz").unlink()
    (root / "imagesTr" / f"{names[1]}_0000.nii.gz").rename(root / "imagesTr" / f"{names[1]}_0003.nii.gz")
    refused = {c.name: c.refused for c in find_cases(root) if c.refused}
    assert list(refused) == names[:2] and f"has 2 channel files ({names[0]}_0000.nii.gz, {names[0]}_0001.nii.gz)" in refused[names[0]]
    assert refused[names[1]] == f"case {names[1]} has no channel 0, only {names[1]}_0003.nii.gz"


def test_dataset_json_fields_are_checked_and_named(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    for broken, message in [
        ({"channel_names": {"0": "CT"}, "numTraining": 1}, "without labels and file_ending"),
        ({**V2_JSON, "file_ending": ".png"}, "file_ending '.png'; only NIfTI"),
        ({**V2_JSON, "labels": {"background": 0, "organ": "one"}}, "label 'organ' has value 'one'"),
        ({**V2_JSON, "labels": {"background": 0, "organ": 1, "liver": 1}}, "labels 'organ' and 'liver' both have value 1"),
        ({"modality": {"0": "CT"}, "labels": {"zero": "background"}}, "labels must map each label value to its name"),
        ([1, 2], "is not a Decathlon dataset.json"),
    ]:
        (root / "dataset.json").write_text(json.dumps(broken))
        with pytest.raises(InvalidInput, match=message):
            read_dataset_json(root)
    (root / "dataset.json").write_text(json.dumps({**V2_JSON, "labels": {"background": 0, "organ": 1, "whole": [1, 2]}}))
    assert read_dataset_json(root).labels == {0: "background", 1: "organ"}  # a region names no one value
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior"}}))
    declared = read_dataset_json(root)
    assert (declared.layout, declared.channels, declared.labels) == ("decathlon", ("MRI",), {0: "background", 1: "Anterior"})
    (root / "imagesTr").mkdir()
    (root / "imagesTr" / "case_1.nii.gz").write_bytes(b"")
    (root / "dataset.json").write_text(json.dumps(V2_JSON))
    with pytest.raises(InvalidInput, match=r"imagesTr/case_1.nii.gz is not named <case>_<channel>.nii.gz"):
        raw_cases(root, read_dataset_json(root))


def test_the_label_names_field_of_an_upload_is_checked() -> None:
    assert parse_label_names('{"1": "organ", "2": " lesion "}') == {1: "organ", 2: "lesion"}
    for raw, message in [("[1]", "must be a JSON object"), ("{not json", "must be a JSON object"),
                         ('{"x": "organ"}', "'x' is not a label value"), ('{"1": ""}', "must be 1-64 printable"),
                         ('{"1": "a\\nb"}', "must be 1-64 printable"), ('{"1": 7}', "must be 1-64 printable")]:
        with pytest.raises(InvalidInput, match=message):
            parse_label_names(raw)
    with pytest.raises(InvalidInput, match="label_names were sent without a label map"):
        ingest_scan(None, "d", "p", Upload("a.nii.gz", b""), None, max_voxels=10, label_names={1: "organ"})


# --- export ----------------------------------------------------------------------------------------


def _succeeded(store: ObjectStore, kind: JobKind, result_keys: dict[str, str], job_id: str) -> str:
    JobRecords(store).put(JobRecord(job_id=job_id, kind=kind, spec={}, state=JobState.succeeded, result_keys=result_keys))
    return job_id


def _world(tmp_path: Path) -> dict:
    """A dataset ingested with label names (4 patients), its 16² view of sagittal slices (cut along axis 0:
    in-plane A and S, which a 2D NIfTI cannot carry to SimpleITK), and a cohort of 6 samples
    written as the sampler writes them (the view's geometry as affine; manifest with provenance, geometry
    and per-file SHA-256)."""
    store = LocalStore(tmp_path / "store")
    names = write_phantom_dataset(tmp_path / "msd", n=4, seed=7, shape=SHAPE)
    for name in names:
        image, label = (Upload(f"{name}.nii.gz", (tmp_path / "msd" / part / f"{name}.nii.gz").read_bytes()) for part in ("imagesTr", "labelsTr"))
        ingest_scan(store, "ph", name, image, label, max_voxels=10**6, label_names={1: "organ", 2: "lesion"})
    manifest = load_manifest(store, "ph")

    def load(scan):
        return tuple(np.asanyarray(load_nifti(store.get_bytes(k), what=k, max_voxels=10**6).dataobj) for k in (scan.image_key, scan.label_key))

    view_id = build_views(store, manifest, mode="slices2d", size=SIZE, axis=0, val_fraction=0.25, test_fraction=0.25, seed=0,
                          keep_empty=False, load_scan=load).split("/")[-2]
    geometry = load_view(store, "ph", view_id).geometry
    cohort_id = new_job_id(JobKind.sample_cohort)
    prefix = f"cohorts/{cohort_id}/"
    rng = np.random.default_rng(0)
    samples = []
    for i in range(6):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[4:12, 4:12] = 1
        mask[6:9, 6:9] = 2 if i % 2 else 1
        files = dict(zip(("image", "label"), sample_nifti_bytes(rng.random((1, SIZE, SIZE)).astype(np.float32), mask, geometry)))
        entry = {"index": i}
        for part, data in files.items():
            key = f"{prefix}samples/{i:05d}/{part}.nii.gz"
            store.put_bytes(key, data)
            entry[part] = {"key": key, "sha256": hashlib.sha256(data).hexdigest()}
        samples.append(entry)
    provenance = {"cohort_id": cohort_id, "generator_id": "g", "dataset": "ph", "dataset_version": manifest.version, "view_id": view_id}
    store.put_json(f"{prefix}manifest.json", {"formats": ["nifti"], "count": 6, "image_size": SIZE, "samples": samples,
                                              "provenance": provenance, "geometry": geometry_section(geometry)})  # fmt: skip
    _succeeded(store, JobKind.sample_cohort, {"manifest": f"{prefix}manifest.json"}, cohort_id)
    return {"store": store, "cohort_id": cohort_id, "view_id": view_id}


def _verify(folder: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """nnunetv2's own check of a raw dataset; its output, which it must end as done with no error or warning."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (folder.parent.parent / var).mkdir(exist_ok=True)
        monkeypatch.setenv(var, str(folder.parent.parent / var))
    try:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    except ImportError as exc:
        pytest.fail(f"nnunetv2 is not installed ({exc}): it is in requirements-tools.lock; run make install")
    capfd.readouterr()
    verify_dataset_integrity(str(folder), num_processes=1)
    out = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in out and "Error" not in out and "Warning" not in out, out
    return out


def test_a_cohort_with_its_real_slices_exports_as_a_dataset_nnunet_accepts(tmp_path: Path, capfd, monkeypatch) -> None:
    world = _world(tmp_path)
    done = export_cohort(world["store"], world["cohort_id"], tmp_path / "out" / "raw", dataset_id=501, with_real=True)
    assert done.folder == tmp_path / "out" / "raw" / "Dataset501_ph-mixed"
    meta = json.loads((done.folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "organ": 1, "lesion": 2} and meta["channel_names"] == {"0": "image"}
    assert meta["numTraining"] == done.synthetic + done.real and done.synthetic == 6 and done.real > 0
    assert meta["file_ending"] == ".nii.gz"
    provenance = json.loads((done.folder / "medsynth.json").read_text())
    cases = provenance["cases"]
    sample = load_nifti(world["store"].get_bytes(f"cohorts/{world['cohort_id']}/samples/00000/image.nii.gz"), what="s", max_voxels=10**4)
    case = load_nifti((done.folder / "imagesTr" / "synth_00000_0000.nii.gz").read_bytes(), what="c", max_voxels=10**4)
    assert case.shape == (SIZE, SIZE, 1) and np.array_equal(case.get_fdata()[..., 0], sample.get_fdata())  # the sample's pixels
    assert not np.allclose(sample.affine, np.eye(4))  # on the cohort's grid: its in-plane axes and origin, its normal
    assert np.allclose(case.affine[:, [0, 1, 3]], sample.affine[:, [0, 1, 3]])  # 999 × the in-plane spacing long (nnU-Net's 2D)
    assert np.allclose(case.affine[:3, 2], sample.affine[:3, 2] / np.linalg.norm(sample.affine[:3, 2]) * 999 * 3.75)
    # every case on the cohort's grid: the view's median pixel spacing, not 1 mm
    affines = {load_nifti((done.folder / "labelsTr" / f"{case}.nii.gz").read_bytes(), what=case, max_voxels=10**4).affine.tobytes()
               for case in cases}
    zooms = load_nifti((done.folder / "imagesTr" / "real_00000_0000.nii.gz").read_bytes(), what="real", max_voxels=10**4).header.get_zooms()
    assert len(affines) == 1 and np.allclose(zooms, [1.5, 3.75, 999 * 3.75])  # 1 mm and 2.5 mm × 24 px padded / 16 px
    # splits by patient: each real patient validates in one fold only, synthetic cases only ever train
    folds = json.loads((done.folder / "splits_final.json").read_text())
    assert len(folds) == done.folds == len({c["patient"] for c in cases.values() if c["source"] == "real"}) >= 2
    for fold in folds:
        held = {cases[c]["patient"] for c in fold["val"]}
        assert all(cases[c]["source"] == "real" for c in fold["val"])
        assert not any(cases[c]["source"] == "real" and cases[c]["patient"] in held for c in fold["train"])
        assert sorted(fold["train"] + fold["val"]) == sorted(cases)
    _verify(done.folder, capfd, monkeypatch)


def test_the_cli_exports_the_synthetic_cohort_alone(tmp_path: Path, capfd, monkeypatch) -> None:
    world = _world(tmp_path / "home")
    monkeypatch.setenv("MEDSYNTH_HOME", str(tmp_path / "home"))
    for var in ("MEDSYNTH_STORE", "MEDSYNTH_KAFKA_BOOTSTRAP", "MEDSYNTH_S3_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    args = ["cohorts", "export-nnunet", world["cohort_id"], str(tmp_path / "raw"), "--dataset-id", "7", "--name", "Phantoms"]
    assert main(args) == 0
    out = capfd.readouterr().out
    folder = tmp_path / "raw" / "Dataset007_Phantoms"
    assert f"wrote {folder}: 6 synthetic + 0 real cases; labels 0 background, 1 organ, 2 lesion" in out, out
    assert not (folder / "splits_final.json").exists()
    _verify(folder, capfd, monkeypatch)
    assert main(args) == 1  # refused (exit 1): never written over
    assert "Dataset007_Phantoms is there already" in capfd.readouterr().err
    assert main([*args[:-2], "--name", "Other"]) == 1  # refused: nnU-Net finds datasets by id
    assert "has that id (Dataset007_Phantoms)" in capfd.readouterr().err


def test_bad_exports_are_refused_with_the_reason(tmp_path: Path) -> None:
    world = _world(tmp_path)
    store, out = world["store"], tmp_path / "raw"
    with pytest.raises(NotFound, match="unknown cohort 'sample-cohort-nope'"):
        export_cohort(store, "sample-cohort-nope", out, dataset_id=1)
    running = new_job_id(JobKind.sample_cohort)
    JobRecords(store).put(JobRecord(job_id=running, kind=JobKind.sample_cohort, spec={}, state=JobState.running))
    with pytest.raises(Conflict, match="is running, not ready"):
        export_cohort(store, running, out, dataset_id=1)
    with pytest.raises(InvalidInput, match="dataset id is an integer from 1 to 999"):
        export_cohort(store, world["cohort_id"], out, dataset_id=1000)
    with pytest.raises(InvalidInput, match="dataset name is 1-64 letters"):
        export_cohort(store, world["cohort_id"], out, dataset_id=1, name="a/b")
    # a sample whose label map is not on its image's grid: nothing is left behind
    key = f"cohorts/{world['cohort_id']}/manifest.json"
    manifest = store.get_json(key)
    label = to_nifti_bytes(np.zeros((SIZE, SIZE + 1), np.uint8), np.eye(4))
    store.put_bytes(manifest["samples"][3]["label"]["key"], label)
    manifest["samples"][3]["label"]["sha256"] = hashlib.sha256(label).hexdigest()
    store.put_json(key, manifest)
    with pytest.raises(InvalidInput, match=r"case synth_00003: the label map's shape \(16, 17\) is not the image's \(16, 16\)"):
        export_cohort(store, world["cohort_id"], out, dataset_id=2)
    assert list(out.iterdir()) == []
    store.put_bytes(manifest["samples"][3]["label"]["key"], b"changed")
    with pytest.raises(InvalidInput, match="is not the file the cohort's manifest lists"):
        export_cohort(store, world["cohort_id"], out, dataset_id=2)


def test_cases_and_label_tables_follow_nnunet_rules(tmp_path: Path) -> None:
    """A sagittal slice (in-plane axes A and S), which SimpleITK refuses as a 2D NIfTI, reads as (x, y, 1)."""
    import SimpleITK as sitk

    sagittal = np.array([[0, 0, 2.0, 0], [0.8, 0, 0, 0], [0, 1.2, 0, 0], [0, 0, 0, 1]])
    image = to_nifti_bytes(np.arange(12, dtype=np.float32).reshape(4, 3), sagittal)
    moved = sagittal.copy()
    moved[0, 3] = 5.0
    with pytest.raises(InvalidInput, match="case c: the label map's affine is not the image's"):
        nnunet_case(image, to_nifti_bytes(np.zeros((4, 3), np.uint8), moved), "c")
    with pytest.raises(InvalidInput, match="case c: label values \\[0.0, 0.5\\] are not integers"):
        nnunet_case(image, to_nifti_bytes(np.full((4, 3), 0.5, np.float32) * np.eye(4, 3, dtype=np.float32), sagittal), "c")
    pixels, labels, values = nnunet_case(image, to_nifti_bytes(np.eye(4, 3, dtype=np.uint8) * 3, sagittal), "c")
    assert values == {0, 3}
    (tmp_path / "i.nii.gz").write_bytes(pixels)
    read = sitk.ReadImage(str(tmp_path / "i.nii.gz"))  # across the slice, nnU-Net's 2D spacing: its planner slices there
    assert read.GetSize() == (4, 3, 1) and np.allclose(read.GetSpacing(), (0.8, 1.2, 999 * 1.2))
    assert sitk.GetArrayFromImage(read)[0].T.tolist() == np.arange(12).reshape(4, 3).tolist()
    # consecutive values from 0, reserved names kept clear of
    assert label_table({0, 3}, {1: "ignore", 3: "organ"}) == {"background": 0, "ignore_1": 1, "label_2": 2, "organ": 3}
    assert label_table({0, 1, 2}, {1: "organ", 2: "organ"}) == {"background": 0, "organ": 1, "organ_2": 2}
