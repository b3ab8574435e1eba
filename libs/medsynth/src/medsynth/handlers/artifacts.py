"""Reading what earlier jobs produced, for the handlers of later ones."""

from __future__ import annotations

import gzip
from typing import Any

import nibabel as nib
import numpy as np

from medsynth.core.errors import InvalidInput
from medsynth.datasets.views import load_view_split, view_key
from medsynth.jobs.lookup import finished
from medsynth.jobs.records import JobRecord, JobRecords
from medsynth.messages import JobKind
from medsynth.store import ObjectStore


def view_splits(store: ObjectStore, dataset: str, view_id: str, splits=("train", "val", "test")) -> tuple[dict, dict[str, dict]]:
    key = view_key(dataset, view_id)
    return store.get_json(key), {s: load_view_split(store, key, s) for s in splits}


SLICE_POSITION_BINS = 3  # inferior, middle, superior third of each scan's slices
CONDITION_SOURCES = {"slice-position": SLICE_POSITION_BINS}


def condition_labels(split: dict[str, np.ndarray], source: str) -> np.ndarray:
    """Class labels of a split's items for a class-conditioned generator.

    ``slice-position``: the item's slice position within its own scan, in thirds (0 inferior, 1
    middle, 2 superior), from the view's per-item ``scans`` and ``index``.
    """
    if source not in CONDITION_SOURCES:
        raise InvalidInput(f"condition_on must be one of {sorted(CONDITION_SOURCES)}, got {source!r}.")
    scans, index = split["scans"], split["index"].astype(np.int64)
    labels = np.zeros(len(index), np.int64)
    for scan in np.unique(scans):
        rows = scans == scan
        lo, hi = index[rows].min(), index[rows].max()
        position = (index[rows] - lo) / max(hi - lo, 1)
        labels[rows] = np.minimum((position * SLICE_POSITION_BINS).astype(np.int64), SLICE_POSITION_BINS - 1)
    return labels


def generator_of(records: JobRecords, generator_id: str) -> JobRecord:
    return finished(records, generator_id, JobKind.train_generator)


def cohort_arrays(store: ObjectStore, records: JobRecords, cohort_id: str, limit: int | None = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """A finished cohort's manifest, images (N, 1, S, S) float32 and masks (N, S, S) uint8."""
    record = finished(records, cohort_id, JobKind.sample_cohort)
    manifest = store.get_json(record.result_keys["manifest"])
    samples = manifest["samples"][:limit]
    if not samples or "image" not in samples[0]:
        raise InvalidInput(f"cohort {cohort_id} has no NIfTI samples to read (formats {manifest['formats']})")
    images = np.stack([_nifti(store, s["image"]["key"]) for s in samples]).astype(np.float32)[:, None]
    masks = np.stack([_nifti(store, s["label"]["key"]) for s in samples]).astype(np.uint8)
    return manifest, images, masks


def _nifti(store: ObjectStore, key: str) -> np.ndarray:
    return np.asanyarray(nib.Nifti1Image.from_bytes(gzip.decompress(store.get_bytes(key))).dataobj)
