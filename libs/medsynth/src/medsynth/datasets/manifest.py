"""Versioned dataset manifests.

Every version is an immutable object ``datasets/<name>/manifests/v<NNNNNN>.json`` holding the full list
of scans. A new version is created with the store's atomic create-if-absent, so concurrent uploads
into one dataset never overwrite each other: the loser of a race re-reads the newest version and
tries again on top of it (optimistic concurrency).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime

from pydantic import BaseModel, Field

from medsynth.core.clock import utcnow
from medsynth.core.errors import Conflict, MedsynthError, NotFound
from medsynth.core.names import check_name
from medsynth.store import ObjectStore

MAX_COMMIT_TRIES = 200


class ScanEntry(BaseModel):
    scan_id: str = Field(description="First 16 hex digits of the original image's SHA-256.")
    patient_id: str
    image_sha256: str
    label_sha256: str | None = None
    original_image_key: str
    original_label_key: str | None = None
    image_key: str = Field(description="Canonical copy: RAS orientation, float32, .nii.gz.")
    label_key: str | None = None
    shape: list[int]
    spacing: list[float]
    orientation: str
    label_values: list[int] = Field(default_factory=list)
    original_filename: str
    ingested_at: datetime = Field(default_factory=utcnow)


class DatasetManifest(BaseModel):
    dataset: str
    version: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    scans: list[ScanEntry] = Field(default_factory=list)

    def find(self, scan_id: str) -> ScanEntry | None:
        return next((s for s in self.scans if s.scan_id == scan_id), None)

    @property
    def patients(self) -> list[str]:
        return sorted({s.patient_id for s in self.scans})


def dataset_prefix(dataset: str) -> str:
    return f"datasets/{check_name(dataset, 'dataset name')}/"


def manifest_key(dataset: str, version: int) -> str:
    return f"{dataset_prefix(dataset)}manifests/v{version:06d}.json"


def list_versions(store: ObjectStore, dataset: str) -> list[int]:
    prefix = f"{dataset_prefix(dataset)}manifests/v"
    return sorted(int(k[len(prefix) : -len(".json")]) for k in store.list(prefix) if k.endswith(".json"))


def list_datasets(store: ObjectStore) -> list[str]:
    return sorted({k.split("/")[1] for k in store.list("datasets/") if "/manifests/" in k})


def load_manifest(store: ObjectStore, dataset: str, version: int | None = None) -> DatasetManifest:
    """The given version of a dataset's manifest, or its newest. Raises :class:`NotFound`."""
    if version is None:
        versions = list_versions(store, dataset)
        if not versions:
            raise NotFound(f"dataset {dataset!r} has no scans yet")
        version = versions[-1]
    try:
        return DatasetManifest.model_validate(store.get_json(manifest_key(dataset, version)))
    except NotFound:
        raise NotFound(f"dataset {dataset!r} has no version {version}") from None


def commit(
    store: ObjectStore, dataset: str, change: Callable[[DatasetManifest], DatasetManifest]
) -> DatasetManifest:
    """Apply ``change`` to the newest manifest (an empty one for a new dataset) and write the result
    as the next version. ``change`` may raise (e.g. :class:`Conflict`) to abort. Retries on races."""
    for _ in range(MAX_COMMIT_TRIES):
        try:
            current = load_manifest(store, dataset)
        except NotFound:
            current = DatasetManifest(dataset=dataset)
        updated = change(current.model_copy(deep=True))
        updated.version, updated.created_at = current.version + 1, utcnow()
        if store.put_if_absent(manifest_key(dataset, updated.version), updated.model_dump_json(indent=1).encode()):
            return updated
        time.sleep(random.uniform(0, 0.05))  # another writer won this version; rebase on theirs
    raise MedsynthError(f"could not commit a new version of dataset {dataset!r} after {MAX_COMMIT_TRIES} tries")


def refuse_duplicate(manifest: DatasetManifest, scan_id: str) -> None:
    """Raise :class:`Conflict` if the manifest already holds a scan with this id (same image bytes)."""
    existing = manifest.find(scan_id)
    if existing is not None:
        raise Conflict(
            f"scan {scan_id} (same image content) is already in dataset {manifest.dataset!r} as patient "
            f"{existing.patient_id!r}, file {existing.original_filename!r}"
        )


def add_scan(store: ObjectStore, dataset: str, entry: ScanEntry) -> DatasetManifest:
    """Append one scan as a new manifest version; :class:`Conflict` if its image is already there."""

    def append(manifest: DatasetManifest) -> DatasetManifest:
        refuse_duplicate(manifest, entry.scan_id)
        manifest.scans.append(entry)
        return manifest

    return commit(store, dataset, append)
