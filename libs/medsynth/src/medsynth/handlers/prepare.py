"""The prepare-dataset handler: a dataset version → training views split by patient."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medsynth.datasets.manifest import ScanEntry, load_manifest
from medsynth.datasets.views import build_views
from medsynth.io.nifti import load_nifti
from medsynth.jobs.worker import JobContext
from medsynth.v1 import jobs_pb2

def prepare_dataset(spec: jobs_pb2.PrepareDataset, ctx: JobContext) -> Mapping[str, str]:
    """Every field of ``spec`` is used as given; the api fills in the documented defaults."""
    store, max_voxels = ctx.store, ctx.settings.max_voxels
    manifest = load_manifest(store, spec.dataset, spec.version or None)

    def read(key: str) -> np.ndarray:
        return np.asanyarray(load_nifti(store.get_bytes(key), what=key, max_voxels=max_voxels).dataobj)

    def load_scan(scan: ScanEntry) -> tuple[np.ndarray, np.ndarray | None]:
        """The image and its label map; where the map covers part of the scan, a masked array whose
        mask is where it says nothing (unlabeled)."""
        image = read(scan.image_key)
        if scan.label_key is None:
            return image, None
        label = read(scan.label_key)
        if scan.coverage_key is None:
            return image, label
        return image, np.ma.MaskedArray(label, mask=read(scan.coverage_key) == 0)

    key = build_views(
        store,
        manifest,
        mode="patches3d" if spec.mode == jobs_pb2.PATCHES_3D else "slices2d",
        size=spec.size,
        axis=spec.axis,
        val_fraction=spec.val_fraction,
        test_fraction=spec.test_fraction,
        seed=spec.seed,
        keep_empty=spec.keep_empty,
        keep_empty_eval=spec.keep_empty_eval,  # false in commands from before it: as views were then
        unlabeled=spec.unlabeled or "include",  # empty in commands from before it: included, as views were then
        load_scan=load_scan,
        progress=ctx.progress,
    )
    return {"view": key}
