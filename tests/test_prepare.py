"""prepare-dataset: a dataset version → training views, split by patient with no patient on two sides."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from medsynth.bus.client import Bus
from medsynth.core.errors import InvalidInput
from medsynth.core.settings import Settings
from medsynth.datasets.ingest import Upload, ingest_scan
from medsynth.datasets.split import split_patients
from medsynth.datasets.views import load_view_split, normalise, parse_view, resize_square
from medsynth.handlers import handlers_for
from medsynth.jobs.records import JobRecords, JobState
from medsynth.jobs.service import JobService
from medsynth.jobs.worker import Worker
from medsynth.bus.messages import JobKind
from medsynth.datasets.phantoms import write_phantom_dataset
from medsynth.store import ObjectStore
from medsynth.v1 import jobs_pb2

from platform_fixtures import wait_for_state


def test_split_is_by_patient_deterministic_and_sized() -> None:
    patients = [f"p{i:03d}" for i in range(40)]
    a = split_patients(patients, 0.15, 0.15, seed=7)
    assert a == split_patients(list(reversed(patients)), 0.15, 0.15, seed=7)  # order-independent
    assert a != split_patients(patients, 0.15, 0.15, seed=8)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 28, "val": 6, "test": 6}
    # adding one patient moves nobody else to another side of the split boundary by much
    b = split_patients([*patients, "p999"], 0.15, 0.15, seed=7)
    assert sum(a[p] != b[p] for p in patients) <= 2


def test_split_edge_cases() -> None:
    assert set(split_patients(["a", "b", "c"], 0.2, 0.2, seed=0).values()) == {"train", "val", "test"}
    assert split_patients(["only"], 0.2, 0.2, seed=0) == {"only": "train"}
    with pytest.raises(InvalidInput, match="sum below 1"):
        split_patients(["a"], 0.6, 0.5, seed=0)
    with pytest.raises(InvalidInput, match="no patients"):
        split_patients([], 0.1, 0.1, seed=0)


def test_normalise_and_resize_by_hand() -> None:
    volume = np.arange(1000, dtype=np.float32).reshape(10, 10, 10) * 1000.0  # huge scale, like some MSD files
    out = normalise(volume)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    image = np.zeros((4, 8), np.float32)
    image[:, :4] = 1.0
    mask = (image > 0).astype(np.uint8)
    img, msk = resize_square(image, mask, 16)
    assert img.shape == msk.shape == (16, 16)
    # padded to 8x8 (2 rows above and below), then doubled: rows 0-3 and 12-15 are padding
    assert msk[:4].sum() == 0 and msk[12:].sum() == 0 and msk[4:12, :8].all() and not msk[4:12, 8:].any()


@pytest.fixture
def ingested(store: ObjectStore, tmp_path: Path) -> list[str]:
    names = write_phantom_dataset(tmp_path / "msd", n=10, seed=3, shape=(24, 24, 10))
    for name in names:
        image = Upload(f"{name}.nii.gz", (tmp_path / "msd" / "imagesTr" / f"{name}.nii.gz").read_bytes())
        label = Upload(f"{name}.nii.gz", (tmp_path / "msd" / "labelsTr" / f"{name}.nii.gz").read_bytes())
        ingest_scan(store, "phantoms", name, image, label, max_voxels=10**6)
    return names


def test_prepare_dataset_job_writes_a_patient_level_split(ingested, store: ObjectStore, platform_settings: Settings) -> None:
    worker = Worker("trainer", platform_settings, store, Bus(platform_settings, client_id="trainer"), handlers_for("trainer"))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    bus = Bus(platform_settings, client_id="api")
    try:
        jobs = JobService(JobRecords(store), bus)
        spec = jobs_pb2.PrepareDataset(dataset="phantoms", version=10, size=32, axis=2, val_fraction=0.2, test_fraction=0.2, seed=1)
        record = jobs.submit(JobKind.prepare_dataset, spec)
        done = wait_for_state(jobs.records, record.job_id, JobState.succeeded, timeout=120)
    finally:
        worker.stop()
        thread.join(30)
        bus.close()
        worker.bus.close()

    view = parse_view(store.get_json(done.result_keys["view"]), done.result_keys["view"])
    sides = [set(view.patients[s]) for s in ("train", "val", "test")]
    assert set.union(*sides) == set(ingested) and sum(map(len, sides)) == len(ingested)  # disjoint, complete
    assert [len(s) for s in sides] == [6, 2, 2]
    for split, patients in zip(("train", "val", "test"), sides):
        arrays = load_view_split(store, view, split)
        assert set(arrays["patients"]) == patients  # every item belongs to its side's patients only
        assert arrays["images"].shape[1:] == (1, 32, 32) and arrays["masks"].shape[1:] == (32, 32)
        assert arrays["images"].min() >= 0 and arrays["images"].max() <= 1
        assert all(m.any() for m in arrays["masks"])  # keep_empty=False keeps foreground slices only
        assert len(arrays["images"]) == view.counts[split]
    assert view.dataset_version == 10 and view.spec.size == 32


def test_prepare_3d_patches(ingested, store: ObjectStore) -> None:
    from medsynth.datasets.manifest import load_manifest
    from medsynth.datasets.views import build_views
    from medsynth.io.nifti import load_nifti

    def load(scan):
        img = np.asanyarray(load_nifti(store.get_bytes(scan.image_key), what="i", max_voxels=10**6).dataobj)
        lbl = np.asanyarray(load_nifti(store.get_bytes(scan.label_key), what="l", max_voxels=10**6).dataobj)
        return img, lbl

    key = build_views(store, load_manifest(store, "phantoms"), mode="patches3d", size=8, axis=2, val_fraction=0.2,
                      test_fraction=0.2, seed=0, keep_empty=True, load_scan=load)
    train = load_view_split(store, parse_view(store.get_json(key), key), "train")
    assert train["images"].shape[1:] == (1, 8, 8, 8)
    # 24x24x10 padded to 24x24x16: 3*3*2 = 18 patches per volume, all kept
    assert len(train["images"]) == 18 * 6
