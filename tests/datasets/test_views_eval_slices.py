"""Views that keep every slice of their val and test patients (keep_empty_eval): the request's default,
the command and the handler carry it, training keeps keep_empty's choice, and views cut the old way keep
their ids and their stored form."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from medsynth.commands.build import prepare_dataset_command
from medsynth.commands.requests import PrepareDatasetCreate
from medsynth.datasets.ingest import Upload, ingest_scan
from medsynth.datasets.manifest import load_manifest
from medsynth.datasets.phantoms import write_phantom_dataset
from medsynth.datasets.views import build_views, load_view_split, parse_view
from medsynth.handlers.prepare import prepare_dataset
from medsynth.io.nifti import load_nifti
from medsynth.store import ObjectStore
from medsynth.store.local import LocalStore
from medsynth.v1 import jobs_pb2
from pipeline_fixtures import PrepareContext

SHAPE = (24, 24, 10)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[ObjectStore, dict[str, np.ndarray]]:
    """Ten phantom patients ingested as dataset 'ph'; returns the store and each patient's label volume."""
    root = tmp_path_factory.mktemp("views")
    store = LocalStore(root / "store")
    names = write_phantom_dataset(root / "msd", n=10, seed=3, shape=SHAPE)
    labels = {}
    for name in names:
        image = Upload(f"{name}.nii.gz", (root / "msd" / "imagesTr" / f"{name}.nii.gz").read_bytes())
        label = Upload(f"{name}.nii.gz", (root / "msd" / "labelsTr" / f"{name}.nii.gz").read_bytes())
        ingest_scan(store, "ph", name, image, label, max_voxels=10**6)
    for scan in load_manifest(store, "ph").scans:  # the canonical (RAS) label volumes the view slices
        labels[scan.patient_id] = np.asanyarray(load_nifti(store.get_bytes(scan.label_key), what="l", max_voxels=10**6).dataobj)
    return store, labels


def _prepare(store: ObjectStore, **body) -> tuple:
    command = prepare_dataset_command("ph", PrepareDatasetCreate(size=32, val_fraction=0.2, test_fraction=0.2, **body), store)
    command = jobs_pb2.PrepareDataset.FromString(command.SerializeToString())  # over the wire, as a worker gets it
    key = prepare_dataset(command, PrepareContext(store))["view"]
    return command, parse_view(store.get_json(key), key)


def test_a_new_view_keeps_every_slice_of_its_val_and_test_patients(phantoms) -> None:
    store, labels = phantoms
    command, view = _prepare(store)  # the request's defaults: keep_empty false, keep_empty_eval true
    assert (command.keep_empty, command.keep_empty_eval) == (False, True)
    assert (view.spec.keep_empty, view.spec.keep_empty_eval) == (False, True)
    assert view.spec.keeps_empty("test") and view.spec.keeps_empty("val") and not view.spec.keeps_empty("train")
    axis = view.spec.axis
    for split in ("val", "test"):
        arrays = load_view_split(store, view, split)
        empty = ~arrays["masks"].reshape(len(arrays["masks"]), -1).any(axis=1)
        expected_empty = sum(int((~labels[p].any(axis=tuple(a for a in range(3) if a != axis))).sum()) for p in view.patients[split])
        assert expected_empty > 0 and int(empty.sum()) == expected_empty  # every empty slice of the source volumes
        assert len(arrays["masks"]) == view.counts[split] == SHAPE[axis] * len(view.patients[split])
        for patient in view.patients[split]:  # whole scans, slice after slice: they stack back into the volume
            assert sorted(arrays["index"][arrays["patients"] == patient].tolist()) == list(range(SHAPE[axis]))
    train = load_view_split(store, view, "train")
    assert all(m.any() for m in train["masks"])  # training keeps keep_empty's choice: foreground slices only
    assert len(train["masks"]) < SHAPE[axis] * len(view.patients["train"])


def test_views_cut_the_old_way_keep_their_id_and_stored_form(phantoms) -> None:
    store, _ = phantoms
    manifest = load_manifest(store, "ph")
    _, old = _prepare(store, keep_empty_eval=False)
    spec = {"mode": "slices2d", "size": 32, "axis": 2, "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0, "keep_empty": False}
    blob = json.dumps({"dataset": "ph", "version": manifest.version, **spec}, sort_keys=True)
    assert old.view_id == hashlib.sha256(blob.encode()).hexdigest()[:16]  # the id such a view always had
    stored = store.get_json(f"datasets/ph/views/{old.view_id}/view.json")
    assert stored["spec"] == spec  # no keep_empty_eval in the stored spec: it reads as views before it did
    test = load_view_split(store, old, "test")
    assert all(m.any() for m in test["masks"])  # and it drops empty held-out slices, as those views did
    _, new = _prepare(store)
    assert new.view_id != old.view_id and store.get_json(f"datasets/ph/views/{new.view_id}/view.json")["spec"]["keep_empty_eval"] is True
    assert new.counts["train"] == old.counts["train"] and new.counts["test"] > old.counts["test"]


def test_a_command_from_before_keep_empty_eval_cuts_the_old_view(phantoms) -> None:
    store, _ = phantoms
    manifest = load_manifest(store, "ph")
    command = jobs_pb2.PrepareDataset(dataset="ph", version=manifest.version, mode=jobs_pb2.SLICES_2D, size=32, axis=2,
                                      val_fraction=0.2, test_fraction=0.2, seed=0, keep_empty=False)  # fmt: skip
    key = prepare_dataset(command, PrepareContext(store))["view"]
    view = parse_view(store.get_json(key), key)
    assert view.spec.keep_empty_eval is False and not view.spec.keeps_empty("test")
    assert view.view_id == _prepare(store, keep_empty_eval=False)[1].view_id


def test_keep_empty_keeps_every_split_whole(phantoms) -> None:
    store, _ = phantoms
    key = build_views(store, load_manifest(store, "ph"), mode="slices2d", size=32, axis=2, val_fraction=0.2, test_fraction=0.2, seed=0,
                      keep_empty=True, load_scan=lambda s: tuple(np.asanyarray(load_nifti(store.get_bytes(k), what=k, max_voxels=10**6).dataobj)
                                                                 for k in (s.image_key, s.label_key)))  # fmt: skip
    view = parse_view(store.get_json(key), key)
    assert all(view.counts[s] == SHAPE[2] * len(view.patients[s]) for s in ("train", "val", "test"))
    assert all(view.spec.keeps_empty(s) for s in ("train", "val", "test"))
