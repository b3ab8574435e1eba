"""The train-segmenter handler on a view that keeps every slice of its held-out patients: early stopping
recorded in metrics.json, and test metrics in 3D (mm) over every slice, empty ones included."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from medsynth.core.settings import Settings
from medsynth.datasets.ingest import Upload, ingest_scan
from medsynth.datasets.manifest import load_manifest
from medsynth.datasets.phantoms import write_phantom_dataset
from medsynth.datasets.views import build_views, load_view
from medsynth.handlers.segment import hd95_slice_spacing, segmentation_options, spec_fields, train_segmentation
from medsynth.io.nifti import load_nifti
from medsynth.jobs.artifacts import view_splits
from medsynth.store import ObjectStore
from medsynth.store.local import LocalStore
from medsynth.v1 import jobs_pb2

SHAPE, SPACING, SIZE = (40, 32, 8), (0.7, 1.1, 2.5), 32


@dataclass
class Ctx:
    store: ObjectStore
    job_id: str = "train-segmenter-test"
    settings: Settings = field(default_factory=lambda: Settings(inception_weights=None))
    seen: list = field(default_factory=list)

    def progress(self, fraction: float, message: str = "") -> None:
        self.seen.append((fraction, message))


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> tuple[ObjectStore, dict[bool, str]]:
    """Eight phantom patients; a view keeping every val/test slice (True) and one cut the old way (False)."""
    root: Path = tmp_path_factory.mktemp("seg-handler")
    store = LocalStore(root / "store")
    for name in write_phantom_dataset(root / "msd", n=8, seed=11, shape=SHAPE, spacing=SPACING):
        image = Upload(f"{name}.nii.gz", (root / "msd" / "imagesTr" / f"{name}.nii.gz").read_bytes())
        label = Upload(f"{name}.nii.gz", (root / "msd" / "labelsTr" / f"{name}.nii.gz").read_bytes())
        ingest_scan(store, "ph", name, image, label, max_voxels=10**6)

    def load(scan):
        return tuple(np.asanyarray(load_nifti(store.get_bytes(k), what=k, max_voxels=10**6).dataobj) for k in (scan.image_key, scan.label_key))

    ids = {}
    for keep in (True, False):
        key = build_views(store, load_manifest(store, "ph"), mode="slices2d", size=SIZE, axis=2, val_fraction=0.25,
                          test_fraction=0.25, seed=0, keep_empty=False, keep_empty_eval=keep, load_scan=load)  # fmt: skip
        ids[keep] = key.split("/")[-2]
    return store, ids


def _train(store: ObjectStore, view_id: str, **options) -> dict:
    command = jobs_pb2.TrainSegmenter(dataset="ph", view_id=view_id, source="real", steps=40, batch_size=8, **options)
    ctx = Ctx(store, job_id=f"train-segmenter-{view_id}-{len(options)}")
    keys = train_segmentation(jobs_pb2.TrainSegmenter.FromString(command.SerializeToString()), ctx)
    return store.get_json(keys["metrics"])


def test_early_stopping_and_3d_metrics_over_every_held_out_slice(views) -> None:
    store, ids = views
    # a gain of 0.5 a check is more than this run makes: with patience 2 it stops at its third check
    metrics = _train(store, ids[True], early_stopping=True, patience=2, val_every=4, min_delta=0.5)
    stopping = metrics["stopping"]
    assert {k: stopping[k] for k in ("early_stopping", "patience", "val_every", "min_delta", "steps_cap")} == {
        "early_stopping": True, "patience": 2, "val_every": 4, "min_delta": 0.5, "steps_cap": 40}
    assert (metrics["stop_reason"], metrics["stopped_step"]) == (stopping["stop_reason"], stopping["stopped_step"]) == ("plateau", 12)
    curves = metrics["curves"]
    assert curves["val_step"] == [4, 8, 12]  # no check (and no step) after the stop
    best = int(np.argmax(curves["val_dice"]))
    assert metrics["best_step"] == stopping["best_step"] == curves["val_step"][best] and metrics["best_val_dice"] == curves["val_dice"][best]
    assert metrics["spec"]["early_stopping"] is True and metrics["spec"]["steps"] == 40
    assert stopping["val_split_empty_slices_kept"] is True
    assert metrics["device"] == "cpu"  # MEDSYNTH_DEVICE auto on a machine without CUDA
    test = metrics["test"]
    view = load_view(store, "ph", ids[True])
    _, splits = view_splits(store, "ph", ids[True], splits=("test",))
    assert test["empty_slices_kept"] is True and test["hd95_mode"] == "3d-stack" and test["hd95_unit"] == "mm"
    assert test["n_slices"] == len(splits["test"]["masks"]) == SHAPE[2] * len(view.patients["test"])
    empty = int((~splits["test"]["masks"].reshape(test["n_slices"], -1).any(axis=1)).sum())
    assert empty > 0 and test["empty_slices"] == empty
    for case in test["per_case"]:
        assert case["n_slices"] == SHAPE[2] and case["slice_spacing"] == [2.5]  # the manifest's spacing along the axis
        np.testing.assert_allclose(case["pixel_spacing"], [(0.7 * 40 / 32, 1.1 * 40 / 32)])
    np.testing.assert_allclose(hd95_slice_spacing(store, view, splits["test"]), 2.5)


def test_the_segmenter_trains_on_the_jobs_device(views, monkeypatch: pytest.MonkeyPatch) -> None:
    """MEDSYNTH_DEVICE reaches train_segmenter through core.devices.pick_device, as the generator trainer's does,
    so the chart's GPU segmenter uses its GPU (and an explicit cuda without one fails, tests/test_devices.py)."""
    import torch

    from medsynth.handlers import segment

    store, ids = views
    asked: list[str] = []

    class Trained(Exception):
        pass

    def train(*args, device=None, **kwargs):
        raise Trained(device)

    monkeypatch.setattr(segment, "pick_device", lambda name: asked.append(name) or torch.device("cpu"))
    monkeypatch.setattr(segment, "train_segmenter", train)
    command = jobs_pb2.TrainSegmenter(dataset="ph", view_id=ids[True], source="real", steps=4, batch_size=8)
    with pytest.raises(Trained) as trained:
        train_segmentation(command, Ctx(store, settings=Settings(device="cuda:1", inception_weights=None)))
    assert asked == ["cuda:1"] and trained.value.args == (torch.device("cpu"),)


def test_a_view_cut_the_old_way_is_tested_per_slice_and_says_so(views) -> None:
    store, ids = views
    metrics = _train(store, ids[False])  # a command from before early stopping: fixed steps, steps // 10 between checks
    assert metrics["stopping"]["early_stopping"] is False and metrics["stop_reason"] == "cap" and metrics["stopped_step"] == 40
    assert metrics["curves"]["val_step"] == list(range(4, 41, 4))
    test = metrics["test"]
    assert test["empty_slices_kept"] is False and test["hd95_mode"] == "per-slice" and test["empty_slices"] == 0
    view = load_view(store, "ph", ids[False])
    _, splits = view_splits(store, "ph", ids[False], splits=("test",))
    assert hd95_slice_spacing(store, view, splits["test"]) is None


def test_an_old_command_gets_the_old_training_rule() -> None:
    fields = spec_fields(segmentation_options(jobs_pb2.TrainSegmenter(source="real", steps=600, batch_size=8)))
    assert (fields["early_stopping"], fields["val_every"], fields["min_steps"]) == (False, 60, 0)
    fields = spec_fields(segmentation_options(jobs_pb2.TrainSegmenter(source="real", steps=5000, batch_size=8, early_stopping=True)))
    assert (fields["early_stopping"], fields["val_every"], fields["patience"]) == (True, 100, 5)
