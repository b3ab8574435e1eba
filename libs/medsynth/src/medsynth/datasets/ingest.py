"""Ingest one NIfTI scan (with an optional label map) into a dataset.

Order of work, so that a failure leaves nothing half-done behind:
validate everything in memory → write the original (free-text header fields cleared) and the
canonical copy under keys derived from the image's content hash → commit a new manifest version → emit ``scan-ingested``.
If the commit fails, the objects written are removed again (unless an identical upload of the same
scan, which shares their keys, owns them).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medsynth.core.errors import Conflict, InvalidInput
from medsynth.core.names import check_name
from medsynth.datasets.manifest import ManifestVersion, ScanEntry, add_scan, dataset_prefix, find_scan, refuse_duplicate
from medsynth.io.nifti import scrub_free_text, to_nifti_bytes, validate_scan
from medsynth.store import ObjectStore

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its bytes in memory, or a file on disk (the ingest service streams uploads
    to disk) with the SHA-256 computed while it was received."""

    filename: str
    data: bytes | None = None
    path: Path | None = None
    sha256: str | None = None

    @property
    def suffix(self) -> str:
        return next(s for s in NIFTI_SUFFIXES if self.filename.lower().endswith(s))

    def read(self) -> bytes:
        return self.data if self.data is not None else Path(self.path).read_bytes()

    def digest(self) -> str:
        return self.sha256 or hashlib.sha256(self.read()).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else Path(self.path).stat().st_size


def check_nifti_name(upload: Upload, what: str) -> None:
    if not upload.filename.lower().endswith(NIFTI_SUFFIXES):
        raise InvalidInput(f"{what} must be a .nii or .nii.gz file, got {upload.filename!r}.")


def ingest_scan(
    store: ObjectStore,
    dataset: str,
    patient_id: str,
    image: Upload,
    label: Upload | None,
    *,
    max_voxels: int,
    on_ingested: Callable[[ScanEntry, ManifestVersion], None] | None = None,
) -> tuple[ScanEntry, ManifestVersion]:
    """Validate, store and register one scan. Raises :class:`InvalidInput`, :class:`TooLarge` or
    :class:`Conflict` (the same image is already in the dataset) before writing anything."""
    check_name(dataset, "dataset name")
    check_name(patient_id, "patient id")
    check_nifti_name(image, "image")
    if label is not None:
        check_nifti_name(label, "label map")
    scan = validate_scan(image.read(), label.read() if label else None, max_voxels=max_voxels)

    image_sha = image.digest()
    scan_id = image_sha[:16]
    refuse_duplicate(store, dataset, scan_id)  # early, one read; add_scan claims the id atomically

    base = f"{dataset_prefix(dataset)}scans/{patient_id}/{scan_id}/"
    objects: dict[str, bytes] = {
        f"{base}original/image{image.suffix}": scrub_free_text(image.read()),
        f"{base}canonical/image.nii.gz": to_nifti_bytes(scan.image, scan.affine),
    }
    if label is not None and scan.label is not None:
        objects[f"{base}original/label{label.suffix}"] = scrub_free_text(label.read())
        objects[f"{base}canonical/label.nii.gz"] = to_nifti_bytes(scan.label, scan.affine)
    keys = list(objects)
    entry = ScanEntry(
        scan_id=scan_id,
        patient_id=patient_id,
        image_sha256=image_sha,
        label_sha256=label.digest() if label else None,
        original_image_key=keys[0],
        image_key=keys[1],
        original_label_key=keys[2] if label else None,
        label_key=keys[3] if label else None,
        shape=list(scan.shape),
        spacing=[float(s) for s in scan.spacing],
        orientation=scan.orientation,
        label_values=list(scan.label_values),
        original_filename=image.filename,
    )
    return entry, commit_scan(store, dataset, entry, objects, on_ingested)


def commit_scan(store: ObjectStore, dataset: str, entry: ScanEntry, objects: dict[str, bytes],
                on_ingested: Callable[[ScanEntry, ManifestVersion], None] | None = None) -> ManifestVersion:
    """Write a validated scan's objects and register it; on any failure remove what was written
    (unless a concurrent identical upload owns the same keys). Every format's ingest ends here."""
    try:
        for key, data in objects.items():
            store.put_bytes(key, data)
        manifest = add_scan(store, dataset, entry)
    except BaseException as exc:
        _remove_unless_registered(store, dataset, entry, list(objects), exc)
        raise
    if on_ingested is not None:
        on_ingested(entry, manifest)
    return manifest


def _remove_unless_registered(store: ObjectStore, dataset: str, entry: ScanEntry, keys: list[str], exc: BaseException) -> None:
    """Undo this upload's writes, except where a concurrent identical upload (same image, same patient:
    the same keys) holds the scan."""
    if isinstance(exc, Conflict):
        winner = find_scan(store, dataset, entry.scan_id)
        if winner is not None and winner.patient_id == entry.patient_id:
            return
    for key in keys:
        try:
            store.delete(key)
        except Exception:  # noqa: BLE001 - the original error is what the caller must see
            log.exception("could not remove %s after a failed ingest", key)
