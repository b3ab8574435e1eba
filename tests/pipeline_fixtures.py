"""Small real inputs for the machine-learning path: phantoms ingested into a dataset and a 32×32 view."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsynth.core.settings import Settings
from medsynth.datasets.ingest import Upload, ingest_scan
from medsynth.datasets.manifest import load_manifest
from medsynth.datasets.views import build_views
from medsynth.io.nifti import load_nifti
from medsynth.datasets.phantoms import make_phantom, phantom_seed, write_phantom_dataset
from medsynth.store import ObjectStore



@dataclass
class PrepareContext:
    """What the prepare-dataset handler uses of its job context."""

    store: ObjectStore
    settings: Settings = field(default_factory=lambda: Settings(inception_weights=None))

    def progress(self, fraction: float, message: str = "") -> None:
        pass


def phantom_view(store: ObjectStore, tmp_path: Path, *, dataset: str = "ph", n: int = 8, size: int = 32) -> str:
    """Ingest ``n`` phantom patients and prepare a ``size``² slice view; returns the view id."""
    names = write_phantom_dataset(tmp_path / "msd", n=n, seed=11, shape=(32, 32, 8))
    for name in names:
        image = Upload(f"{name}.nii.gz", (tmp_path / "msd" / "imagesTr" / f"{name}.nii.gz").read_bytes())
        label = Upload(f"{name}.nii.gz", (tmp_path / "msd" / "labelsTr" / f"{name}.nii.gz").read_bytes())
        ingest_scan(store, dataset, name, image, label, max_voxels=10**6)

    def load(scan):
        arrays = [np.asanyarray(load_nifti(store.get_bytes(k), what=k, max_voxels=10**6).dataobj) for k in (scan.image_key, scan.label_key)]
        return arrays[0], arrays[1]

    key = build_views(store, load_manifest(store, dataset), mode="slices2d", size=size, axis=2, val_fraction=0.25,
                      test_fraction=0.25, seed=0, keep_empty=False, load_scan=load)
    return key.split("/")[-2]


def phantom_slices(patients: range, size: int, depth: Iterable[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (each scaled to [0, 1]), masks and patient ids of neighbouring slices ``depth`` of each
    phantom patient (volumes ``size`` x ``size`` x 8)."""
    images, masks, ids = [], [], []
    for patient in patients:
        volume, label, _ = make_phantom(phantom_seed(11, patient), (size, size, 8))
        for z in depth:
            s = volume[:, :, z]
            images.append((s - s.min()) / (s.max() - s.min()))
            masks.append(label[:, :, z])
            ids.append(f"p{patient}")
    return np.stack(images)[:, None].astype(np.float32), np.stack(masks), np.array(ids)
