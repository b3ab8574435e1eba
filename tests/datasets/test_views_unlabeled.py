"""Unlabeled scans in views (issue 23, item 4): flagged, counted and listed, or left out on request;
jobs that need masks refuse a view that holds them, naming how many sit where and what to do; views cut
before this keep their ids and are not refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsynth.commands.build import generator_command, prepare_dataset_command, segmentation_command
from medsynth.commands.requests import GeneratorCreate, PrepareDatasetCreate, SegmentationCreate
from medsynth.core.errors import InvalidInput
from medsynth.datasets.ingest import Upload, ingest_scan
from medsynth.datasets.manifest import load_manifest
from medsynth.datasets.phantoms import write_phantom_dataset
from medsynth.datasets.split import SPLITS
from medsynth.datasets.views import ViewSummary, build_views, load_view_split, parse_view, view_id_for
from medsynth.handlers.prepare import prepare_dataset
from medsynth.jobs.records import JobRecords
from medsynth.store import ObjectStore
from medsynth.store.local import LocalStore
from medsynth.v1 import jobs_pb2
from pipeline_fixtures import PrepareContext


SHAPE = (24, 24, 10)
UNLABELED = {"phantom_001", "phantom_004", "phantom_007"}  # uploaded without their label maps


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> ObjectStore:
    """Ten phantom patients as dataset 'mx', three of them without a label map."""
    root = tmp_path_factory.mktemp("unlabeled")
    store = LocalStore(root / "store")
    names = write_phantom_dataset(root / "msd", n=10, seed=3, shape=SHAPE)
    assert UNLABELED <= set(names)
    for name in names:
        image = Upload(f"{name}.nii.gz", (root / "msd" / "imagesTr" / f"{name}.nii.gz").read_bytes())
        label = None if name in UNLABELED else Upload(f"{name}.nii.gz", (root / "msd" / "labelsTr" / f"{name}.nii.gz").read_bytes())
        ingest_scan(store, "mx", name, image, label, max_voxels=10**6)
    return store


def _prepare(store: ObjectStore, **body) -> ViewSummary:
    command = prepare_dataset_command("mx", PrepareDatasetCreate(size=32, val_fraction=0.2, test_fraction=0.2, **body), store)
    command = jobs_pb2.PrepareDataset.FromString(command.SerializeToString())  # over the wire, as a worker gets it
    key = prepare_dataset(command, PrepareContext(store))["view"]
    return parse_view(store.get_json(key), key)


def _scan_ids(store: ObjectStore, patients: set[str]) -> set[str]:
    return {s.scan_id for s in load_manifest(store, "mx").scans if s.patient_id in patients}


def test_a_view_includes_unlabeled_scans_flagged_and_listed_by_split(mixed: ObjectStore) -> None:
    view = _prepare(mixed)
    assert view.spec.unlabeled == "include" and view.excluded_scans == []
    listed = {scan for split in SPLITS for scan in view.unlabeled_scans[split]}
    assert listed == _scan_ids(mixed, UNLABELED)
    for split in SPLITS:
        arrays = load_view_split(mixed, view, split)
        from_unlabeled = np.isin(arrays["patients"], sorted(UNLABELED))
        assert (arrays["labeled"] == ~from_unlabeled).all()  # the flag is exactly "its scan has a label map"
        assert not arrays["masks"][from_unlabeled].any()  # zeros for want of another value, flagged as such
        assert from_unlabeled.sum() == SHAPE[2] * len(set(arrays["patients"][from_unlabeled]))  # every slice of them kept
        assert view.labeled[split] == (~from_unlabeled).sum() and view.counts[split] == len(arrays["labeled"])
        assert set(view.unlabeled_scans[split]) == _scan_ids(mixed, set(view.patients[split]) & UNLABELED)


def test_include_keeps_the_view_id_views_had_before_the_option(mixed: ObjectStore) -> None:
    view = _prepare(mixed)
    before = {k: v for k, v in view.spec.model_dump(mode="json").items()}
    assert "unlabeled" not in before  # left out of the dump at its default, like keep_empty_eval=False
    assert view.view_id == view_id_for(load_manifest(mixed, "mx"), before)


def test_exclude_leaves_unlabeled_scans_out_and_lists_them(mixed: ObjectStore) -> None:
    included, view = _prepare(mixed), _prepare(mixed, unlabeled="exclude")
    assert view.view_id != included.view_id and view.spec.unlabeled == "exclude"
    assert set(view.excluded_scans) == _scan_ids(mixed, UNLABELED)
    assert all(view.unlabeled_scans[s] == [] for s in SPLITS)
    for split in SPLITS:
        arrays = load_view_split(mixed, view, split)
        assert not set(arrays["patients"]) & UNLABELED and arrays["labeled"].all()
        assert view.labeled[split] == view.counts[split]


def test_jobs_that_need_masks_refuse_a_view_with_unlabeled_scans_and_say_what_to_do(mixed: ObjectStore) -> None:
    view = _prepare(mixed)
    in_train = len(view.unlabeled_scans["train"])
    assert in_train > 0  # the split puts some of the three in training (seeded: fixed)
    with pytest.raises(InvalidInput) as refused:
        generator_command(GeneratorCreate(dataset="mx", view_id=view.view_id), mixed)
    message = str(refused.value)
    assert f"{in_train} unlabeled in its train split" in message and '"unlabeled": "exclude"' in message and "generator" in message
    records = JobRecords(mixed)
    with pytest.raises(InvalidInput, match="segmenter") as refused:
        segmentation_command(SegmentationCreate(dataset="mx", view_id=view.view_id), mixed, records)
    for split in SPLITS:
        if view.unlabeled_scans[split]:
            assert f"{len(view.unlabeled_scans[split])} unlabeled in its {split} split" in str(refused.value)
    excluded = _prepare(mixed, unlabeled="exclude")
    assert generator_command(GeneratorCreate(dataset="mx", view_id=excluded.view_id), mixed) is not None
    assert segmentation_command(SegmentationCreate(dataset="mx", view_id=excluded.view_id), mixed, records) is not None


def test_a_view_from_before_records_nothing_and_is_not_refused(mixed: ObjectStore) -> None:
    stored = _prepare(mixed).model_dump(mode="json")
    old = {k: v for k, v in stored.items() if k not in ("labeled", "unlabeled_scans", "excluded_scans")}
    view = parse_view(old, "old view.json")
    assert view.labeled is None and view.unlabeled_scans is None
    assert view.unlabeled_problem(SPLITS, "anything") is None


def test_exclude_on_a_dataset_without_any_label_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    names = write_phantom_dataset(tmp_path / "msd", n=3, seed=0, shape=SHAPE)
    for name in names:
        ingest_scan(store, "bare", name, Upload(f"{name}.nii.gz", (tmp_path / "msd" / "imagesTr" / f"{name}.nii.gz").read_bytes()),
                    None, max_voxels=10**6)
    with pytest.raises(InvalidInput, match="none of its 3 scans has a label map"):
        build_views(store, load_manifest(store, "bare"), mode="slices2d", size=32, axis=2, val_fraction=0.2, test_fraction=0.2,
                    seed=0, keep_empty=False, unlabeled="exclude", load_scan=lambda s: (np.zeros(SHAPE), None))
    with pytest.raises(InvalidInput, match="unlabeled must be"):
        build_views(store, load_manifest(store, "bare"), mode="slices2d", size=32, axis=2, val_fraction=0.2, test_fraction=0.2,
                    seed=0, keep_empty=False, unlabeled="drop", load_scan=lambda s: (np.zeros(SHAPE), None))


def test_a_study_on_a_view_with_unlabeled_scans_is_refused_before_anything_runs(mixed: ObjectStore) -> None:
    from medsynth.studies.runner import create_study
    from medsynth.studies.spec import StudyCreate

    view = _prepare(mixed)
    spec = StudyCreate(dataset="mx", view_id=view.view_id, seeds=[0], families=[{"generator": {"family": "joint-gan"}}])
    with pytest.raises(InvalidInput, match="a study .*needs a mask for every item"):
        create_study(spec, mixed, jobs=None, max_jobs=500)  # refused before a job could be submitted
    assert not list(mixed.list("studies/"))


def test_partly_labeled_scans_flag_each_slice_or_patch_the_coverage_does_not_wholly_include(mixed: ObjectStore) -> None:
    """A label map covering part of a scan comes as a masked array (masked: unlabeled): an item is
    labeled only where the map covers all of it — slices along the axis, 8³ patches by their window."""
    from medsynth.io.nifti import load_nifti

    def load(scan):
        image = np.asanyarray(load_nifti(mixed.get_bytes(scan.image_key), what="i", max_voxels=10**6).dataobj)
        if scan.label_key is None:
            return image, None
        label = np.asanyarray(load_nifti(mixed.get_bytes(scan.label_key), what="l", max_voxels=10**6).dataobj)
        unknown = np.zeros(label.shape, bool)
        unknown[:, :, 8:] = True  # the map says nothing about slices 8 and 9
        return image, np.ma.MaskedArray(label, mask=unknown)

    manifest = load_manifest(mixed, "mx")
    key = build_views(mixed, manifest, mode="slices2d", size=32, axis=2, val_fraction=0.2, test_fraction=0.2, seed=5,
                      keep_empty=True, load_scan=load)
    view = parse_view(mixed.get_json(key), key)
    train = load_view_split(mixed, view, "train")
    labeled_patients = ~np.isin(train["patients"], sorted(UNLABELED))
    assert (train["labeled"] == (labeled_patients & (train["index"] < 8))).all()
    assert set(view.partially_labeled_scans.train) == _scan_ids(mixed, set(view.patients.train) - UNLABELED)
    key = build_views(mixed, manifest, mode="patches3d", size=8, axis=2, val_fraction=0.2, test_fraction=0.2, seed=5,
                      keep_empty=True, load_scan=load)
    train = load_view_split(mixed, parse_view(mixed.get_json(key), key), "train")
    # 24×24×10 padded to 24×24×16: 3×3×2 windows, index = 6x + 2y + z; z = 0 spans slices 0-7 (covered), z = 1 slices 8-15
    labeled = train["labeled"][~np.isin(train["patients"], sorted(UNLABELED))]
    index = train["index"][~np.isin(train["patients"], sorted(UNLABELED))]
    assert (labeled == (index % 2 == 0)).all() and labeled.any() and not labeled.all()
    key = build_views(mixed, manifest, mode="slices2d", size=32, axis=2, val_fraction=0.2, test_fraction=0.2, seed=5,
                      keep_empty=True, unlabeled="exclude", load_scan=load)
    excluded = parse_view(mixed.get_json(key), key)
    partly = len([s for s in manifest.scans if s.patient_id not in UNLABELED])
    assert excluded.excluded_items == 2 * partly and all(excluded.partially_labeled_scans[s] == [] for s in SPLITS)
    assert load_view_split(mixed, excluded, "train")["labeled"].all()
