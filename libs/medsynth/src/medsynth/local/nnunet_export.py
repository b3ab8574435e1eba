"""`medsynth cohorts export-nnunet`: a finished cohort — with ``with_real``, and the training split of the
view its generator learned from — as an nnU-Net v2 raw dataset (:mod:`medsynth.io.nnunet`).

Written under ``out_dir``::

    DatasetXXX_Name/
        dataset.json                  channel_names, labels (0 background, then every value up to the
                                      largest, named as the dataset's scans name them), numTraining, file_ending
        imagesTr/synth_00000_0000.nii.gz, labelsTr/synth_00000.nii.gz     sample 0 (its files, checked against the manifest)
        imagesTr/real_00000_0000.nii.gz,  labelsTr/real_00000.nii.gz      a labelled training slice of the view
        medsynth.json                 where each case came from (cohort sample and its SHA-256, or patient,
                                      scan and slice), the cohort, its generator and view
        splits_final.json             with real cases: folds by patient (:func:`patient_folds`), which
                                      nnUNetv2_plan_and_preprocess copies to the preprocessed dataset

Every case is one 2D slice, a NIfTI of shape (x, y, 1) (:func:`medsynth.io.nnunet.nnunet_case`: float32
in [0, 1], the slice axis given nnU-Net's 2D spacing), image and label map on one grid, with the
cohort's affine (:func:`medsynth.sampling.cohort.cohort_geometry`: the view's median pixel spacing and
orientation; the identity for cohorts made before): the real slices are written as the cohort's
samples are, so both kinds sit on the view's pixel grid, the one the generator learned. The folder is
written beside its final name and renamed into place at the end: an export that fails leaves nothing
under the name, and an existing one is never written over.

The store is read directly, as ``medsynth generators list`` does (whoever holds the store's
credentials): the view's training slices are patient data that no REST route hands out.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.bus.messages import JobKind
from medsynth.core.errors import InvalidInput, NotFound
from medsynth.datasets.manifest import load_manifest
from medsynth.io.nnunet import case_paths, dataset_folder, dataset_json, label_table, nnunet_case
from medsynth.jobs.artifacts import view_splits
from medsynth.jobs.lookup import finished
from medsynth.jobs.records import JobRecords
from medsynth.sampling.cohort import cohort_geometry, sample_nifti_bytes
from medsynth.store import ObjectStore

EXPORT_FORMAT = "medsynth/nnunet-export/v1"
MAX_FOLDS = 5


@dataclass(frozen=True)
class Exported:
    folder: Path
    synthetic: int
    real: int
    labels: dict[str, int]
    folds: int  # of splits_final.json; 0 when none was written


def export_cohort(store: ObjectStore, cohort_id: str, out_dir: Path, *, dataset_id: int, name: str | None = None,
                  with_real: bool = False) -> Exported:
    """Write cohort ``cohort_id`` of the project store ``store`` as ``out_dir/DatasetXXX_Name``.

    Raises:
        NotFound: no such cohort. Conflict: a cohort not finished.
        InvalidInput: a cohort without NIfTI samples, a case whose image and label map differ in
            shape or affine, ``with_real`` for a cohort without its view, or of a view of 3D patches
            or of another image size; an out folder that holds the dataset or its id already.
    """
    record = finished(JobRecords(store), cohort_id, JobKind.sample_cohort)
    manifest = store.get_json(record.result_keys["manifest"])
    samples = [s for s in manifest.get("samples", []) if "image" in s and "label" in s]
    if not samples:
        raise InvalidInput(f"cohort {cohort_id} has no NIfTI samples to export (formats {manifest.get('formats')}); "
                           "request it with the format nifti")
    provenance = manifest.get("provenance") or {}
    source = provenance.get("dataset")
    name = name or _default_name(source, with_real)
    folder = dataset_folder(dataset_id, name)
    final = out_dir / folder
    _check_free(out_dir, dataset_id, folder)
    names, modality = _dataset_labels(store, source, provenance.get("dataset_version"))
    real = _real_slices(store, provenance, manifest.get("image_size")) if with_real else []
    geometry = cohort_geometry(manifest)

    partial = out_dir / f".{folder}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "imagesTr").mkdir(parents=True)
    (partial / "labelsTr").mkdir()
    try:
        values: set[int] = set()
        cases: dict[str, dict[str, Any]] = {}
        for n, sample in enumerate(samples):
            case = f"synth_{n:05d}"
            image, label = (_stored(store, sample[part], f"cohort {cohort_id} sample {sample.get('index', n)}'s {part}")
                            for part in ("image", "label"))
            values |= _write_case(partial, case, image, label)
            cases[case] = {"source": "synthetic", "sample": sample.get("index", n), "image_sha256": sample["image"].get("sha256")}
        for n, (patient, scan, index, image, mask) in enumerate(real):
            case = f"real_{n:05d}"
            values |= _write_case(partial, case, *sample_nifti_bytes(image, mask, geometry))
            cases[case] = {"source": "real", "patient": patient, "scan": scan, "slice": index}
        labels = label_table(values | set(names), names)
        description = f"medsynth cohort {cohort_id} ({len(samples)} synthetic slices" + (
            f", {len(real)} real training slices of view {provenance.get('view_id')})" if with_real else ")")
        _write_json(partial / "dataset.json", dataset_json(channel=_channel(modality), labels=labels, cases=len(cases), name=folder,
                                                           description=description))
        folds = patient_folds(cases)
        if folds:
            _write_json(partial / "splits_final.json", folds)
        _write_json(partial / "medsynth.json", {
            "format": EXPORT_FORMAT, "exported_at": datetime.now(timezone.utc).isoformat(), "cohort_id": cohort_id,
            "manifest_sha256": store.stat(record.result_keys["manifest"]).sha256, "provenance": provenance,
            "with_real": with_real, "modality": modality, "cases": cases,
        })  # fmt: skip
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return Exported(final, len(samples), len(real), labels, len(folds))


def patient_folds(cases: dict[str, dict[str, Any]]) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json`` for an export with real slices: up to five folds, each
    validating on the real slices of its patients (patients dealt to folds in sorted order) and
    training on every other case, synthetic ones included — nnU-Net's own split is by case, which
    would put slices of one patient on both sides. [] for fewer than two real patients."""
    patients = sorted({c["patient"] for c in cases.values() if c["source"] == "real"})
    if len(patients) < 2:
        return []
    k = min(MAX_FOLDS, len(patients))
    fold_of = {p: i % k for i, p in enumerate(patients)}
    folds = []
    for fold in range(k):
        val = [case for case, c in cases.items() if c["source"] == "real" and fold_of[c["patient"]] == fold]
        held = set(val)
        folds.append({"train": [case for case in cases if case not in held], "val": val})
    return folds


def _default_name(dataset: str | None, with_real: bool) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", dataset or "medsynth").strip("-_") or "medsynth"
    return f"{base[:50]}-{'mixed' if with_real else 'synthetic'}"


def _check_free(out_dir: Path, dataset_id: int, folder: str) -> None:
    """nnU-Net finds a dataset by its id: refuse an out folder that has this one, or another of its id."""
    if not out_dir.exists():
        out_dir.mkdir(parents=True)
    if not out_dir.is_dir():
        raise InvalidInput(f"{out_dir} is not a folder")
    taken = sorted(p.name for p in out_dir.glob(f"Dataset{dataset_id:03d}_*"))
    if taken:
        what = "is there already" if folder in taken else f"has that id ({', '.join(taken)}): nnU-Net finds datasets by id"
        raise InvalidInput(f"{out_dir / folder} {what}; choose another --dataset-id or remove it")


def _dataset_labels(store: ObjectStore, dataset: str | None, version: int | None) -> tuple[dict[int, str], str | None]:
    """The label names the source dataset's scans carry (DICOM segments, or an upload's label_names)
    and the DICOM modality where it recorded one."""
    if not dataset:
        return {}, None
    try:
        manifest = load_manifest(store, dataset, version)
    except NotFound:
        return {}, None
    names = {v: n for s in manifest.scans for v, n in sorted(s.label_names.items()) if v}
    modality = next((s.dicom.modality for s in manifest.scans if s.dicom is not None and s.dicom.modality), None)
    return names, modality


def _channel(modality: str | None) -> str:
    """The channel name: nnU-Net normalises a channel named ``CT`` with dataset-wide Hounsfield
    statistics, which these [0, 1] images no longer have; any other name gets a per-image z-score."""
    if not modality:
        return "image"
    return f"{modality} (scaled to 0-1)" if modality.upper() == "CT" else modality


def _stored(store: ObjectStore, part: dict[str, Any], what: str) -> bytes:
    data = store.get_bytes(part["key"])
    if part.get("sha256") and hashlib.sha256(data).hexdigest() != part["sha256"]:
        raise InvalidInput(f"{what} ({part['key']}) is not the file the cohort's manifest lists: its SHA-256 differs")
    return data


def _write_case(root: Path, case: str, image: bytes, label: bytes) -> set[int]:
    image, label, values = nnunet_case(image, label, case)
    image_path, label_path = case_paths(root, case)
    image_path.write_bytes(image)
    label_path.write_bytes(label)
    return values


def _real_slices(store: ObjectStore, provenance: dict[str, Any], image_size: int | None) -> list[tuple[str, str, int, np.ndarray, np.ndarray]]:
    """The labelled training slices of the view the cohort's generator learned from:
    (patient, scan, slice, image (1, S, S), mask (S, S))."""
    dataset, view_id = provenance.get("dataset"), provenance.get("view_id")
    if not dataset or not view_id:
        raise InvalidInput(f"the cohort's manifest does not name the dataset and view its generator learned from "
                           f"(provenance {sorted(provenance)}): export it without --with-real")
    view, splits = view_splits(store, dataset, view_id, splits=("train",))
    if view.spec.mode != "slices2d":
        raise InvalidInput(f"view {view_id} holds {view.spec.mode}; only a view of 2D slices mixes with a cohort's slices")
    train = splits["train"]
    if not train:
        raise InvalidInput(f"view {view_id} has no training slices")
    if image_size is not None and train["images"].shape[-1] != image_size:
        raise InvalidInput(f"view {view_id} has {train['images'].shape[-1]}-pixel slices, the cohort {image_size}-pixel ones")
    labelled = train["labeled"] if "labeled" in train else np.ones(len(train["images"]), bool)
    return [(str(train["patients"][i]), str(train["scans"][i]), int(train["index"][i]), train["images"][i], train["masks"][i])
            for i in np.flatnonzero(labelled)]


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
