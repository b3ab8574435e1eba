"""Reading what earlier jobs produced, for the handlers of later ones."""

from __future__ import annotations

import gzip
from typing import Any

import nibabel as nib
import numpy as np

from medsynth.core.errors import InvalidInput
from medsynth.datasets.views import ViewSummary, load_view, load_view_split
from medsynth.generators.entry import GeneratorEntry, load_entry
from medsynth.jobs.lookup import finished
from medsynth.jobs.records import JobRecord, JobRecords
from medsynth.bus.messages import JobKind
from medsynth.store import ObjectStore


def view_splits(store: ObjectStore, dataset: str, view_id: str, splits=("train", "val", "test")) -> tuple[ViewSummary, dict[str, dict]]:
    view = load_view(store, dataset, view_id)
    return view, {s: load_view_split(store, view, s) for s in splits}


def generator_of(records: JobRecords, generator_id: str) -> JobRecord:
    return finished(records, generator_id, JobKind.train_generator)


def generator_entry(store: ObjectStore, records: JobRecords, generator_id: str) -> GeneratorEntry:
    """A finished generator's registry entry (404 unknown, 409 not finished, 422 an entry that does not validate)."""
    return load_entry(store, generator_of(records, generator_id).result_keys["generator"])


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
