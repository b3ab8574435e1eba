"""Ingest one NIfTI scan (with an optional label map) into a dataset.

Order of work, so that a failure leaves nothing half-done behind:
validate everything (an upload on disk is read from there: one array in memory per file) → claim
the scan's id in the dataset (the image's content hash) → write the original (free-text header
fields cleared) and the canonical copy under keys derived from that id (for an upload on disk,
through files beside it, streamed to the store) → commit a new manifest version → emit
``scan-ingested``. Only the claim's holder writes under those keys, so two uploads of one image
never mix their objects: the second is refused before it writes anything. If a write or the commit
fails, the objects written are removed and the claim released.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medsynth.core.errors import InvalidInput
from medsynth.core.names import check_name
from medsynth.datasets.manifest import (ManifestVersion, ScanEntry, append_scans, claim_scans, dataset_prefix, refuse_duplicate,
                                        release_claims)
from medsynth.io.nifti import scrub_free_text, scrub_free_text_file, to_nifti_bytes, validate_scan, write_nifti
from medsynth.store import ObjectStore

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its bytes in memory, or a file on disk (the ingest service streams uploads
    to disk) with the SHA-256 computed while it was received. A file on disk is in a temporary folder
    of the caller's, which ingestion also uses for the copies it stores (removed with the folder)."""

    filename: str
    data: bytes | None = None
    path: Path | None = None
    sha256: str | None = None

    @property
    def suffix(self) -> str:
        return next(s for s in NIFTI_SUFFIXES if self.filename.lower().endswith(s))

    def read(self) -> bytes:
        return self.data if self.data is not None else Path(self.path).read_bytes()

    @property
    def source(self) -> bytes | Path:
        """What the NIfTI readers take: the bytes, or the file (then read from disk as needed, not whole)."""
        return self.data if self.data is not None else Path(self.path)

    def digest(self) -> str:
        return self.sha256 or hashlib.sha256(self.read()).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else Path(self.path).stat().st_size


def check_nifti_name(upload: Upload, what: str) -> None:
    if not upload.filename.lower().endswith(NIFTI_SUFFIXES):
        raise InvalidInput(f"{what} must be a .nii or .nii.gz file, got {upload.filename!r}.")


MAX_LABEL_NAME = 64


def parse_label_names(raw: str) -> dict[int, str]:
    """An upload's ``label_names``: a JSON object of label value → name (``{"1": "Anterior"}``).

    Raises:
        InvalidInput: not such an object; a value that is not an integer 0-65535; a name that is empty,
            longer than 64 characters or holds control characters.
    """
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidInput(f"label_names must be a JSON object of label value to name, e.g. {{\"1\": \"Anterior\"}}, got {raw[:80]!r}.")
    names: dict[int, str] = {}
    for value, name in parsed.items():
        if not (value.isascii() and value.isdigit() and int(value) <= 65535):
            raise InvalidInput(f"label_names: {value!r} is not a label value (an integer 0-65535).")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_LABEL_NAME or not name.isprintable():
            raise InvalidInput(f"label_names: the name of label {value} must be 1-{MAX_LABEL_NAME} printable characters, got {name!r}.")
        names[int(value)] = name.strip()
    return names


def ingest_scan(
    store: ObjectStore,
    dataset: str,
    patient_id: str,
    image: Upload,
    label: Upload | None,
    *,
    max_voxels: int,
    time_series: str = "refuse",
    on_ingested: Callable[[ScanEntry, ManifestVersion], None] | None = None,
    label_names: Mapping[int, str] | None = None,
) -> tuple[ScanEntry, ManifestVersion]:
    """Validate, store and register one scan. Raises :class:`InvalidInput`, :class:`TooLarge` or
    :class:`Conflict` (the same image is already in the dataset) before writing anything. A 4D image
    (a time series) follows ``time_series``, the project's option: its ``"first"`` time point is the
    scan (the 4D file its original), else it is refused (see :func:`validate_scan`). ``label_names``
    (value → name, e.g. from a dataset.json) are kept for the label map's values other than 0."""
    check_name(dataset, "dataset name")
    check_name(patient_id, "patient id")
    check_nifti_name(image, "image")
    if label is not None:
        check_nifti_name(label, "label map")
    elif label_names:
        raise InvalidInput("label_names were sent without a label map.")
    scan = validate_scan(image.source, label.source if label else None, max_voxels=max_voxels, time_series=time_series)

    image_sha = image.digest()
    scan_id = image_sha[:16]
    refuse_duplicate(store, dataset, scan_id)  # early, one read; commit_scan claims the id atomically

    base = f"{dataset_prefix(dataset)}scans/{patient_id}/{scan_id}/"
    objects: dict[str, bytes | Path] = {
        f"{base}original/image{image.suffix}": _original(image),
        f"{base}canonical/image.nii.gz": _canonical(scan.image, scan.affine, image),
    }
    if label is not None and scan.label is not None:
        objects[f"{base}original/label{label.suffix}"] = _original(label)
        objects[f"{base}canonical/label.nii.gz"] = _canonical(scan.label, scan.affine, label)
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
        label_names={v: label_names[v] for v in scan.label_values if v and v in (label_names or {})},
        original_filename=image.filename,
    )
    return entry, commit_scan(store, dataset, entry, objects, on_ingested)


def _original(upload: Upload) -> bytes | Path:
    """The stored original: bytes for an upload in memory; for one on disk, a file beside it (in the
    upload's folder, which its owner removes), streamed."""
    if upload.path is None:
        return scrub_free_text(upload.data)
    out = Path(upload.path).with_name(f"{Path(upload.path).name}.original")
    scrub_free_text_file(Path(upload.path), out)
    return out


def _canonical(array, affine, upload: Upload) -> bytes | Path:
    """The stored canonical copy, as :func:`_original` keeps it: bytes, or a file written a slab at a time."""
    if upload.path is None:
        return to_nifti_bytes(array, affine)
    out = Path(upload.path).with_name(f"{Path(upload.path).name}.canonical.nii.gz")
    write_nifti(array, affine, out)
    return out


def _put(store: ObjectStore, key: str, data: bytes | Path) -> None:
    if isinstance(data, Path):
        store.put_file(key, data)  # streamed from disk
    else:
        store.put_bytes(key, data)


def commit_scan(store: ObjectStore, dataset: str, entry: ScanEntry, objects: Mapping[str, bytes | Path],
                on_ingested: Callable[[ScanEntry, ManifestVersion], None] | None = None) -> ManifestVersion:
    """:func:`commit_scans` of one scan. Every format's ingest ends here or there."""
    return commit_scans(store, dataset, [(entry, objects)], on_ingested)


def commit_scans(store: ObjectStore, dataset: str, scans: Sequence[tuple[ScanEntry, Mapping[str, bytes | Path]]],
                 on_ingested: Callable[[ScanEntry, ManifestVersion], None] | None = None) -> ManifestVersion:
    """Store and register validated scans as one new version, all or nothing: claim their ids
    (:class:`Conflict`, with nothing written, if one is taken), write their objects under the claimed
    keys, append them. On any failure the objects written are removed and the claims released."""
    entries = [entry for entry, _ in scans]
    claim_scans(store, dataset, entries)
    written: list[str] = []
    try:
        for _, objects in scans:
            for key, data in objects.items():
                written.append(key)
                _put(store, key, data)
        manifest = append_scans(store, dataset, entries)
    except BaseException:
        _undo(store, dataset, entries, written)
        raise
    if on_ingested is not None:
        for entry in entries:
            on_ingested(entry, manifest)
    return manifest


def _undo(store: ObjectStore, dataset: str, entries: list[ScanEntry], written: list[str]) -> None:
    """Remove a failed upload's objects (under keys its claims made its own), then its claims: an
    undeleted claim is only taken over once stale, so the upload can be retried after a while."""
    try:
        for key in written:
            store.delete(key)
        release_claims(store, dataset, entries)
    except Exception:  # noqa: BLE001 - the original error is what the caller must see
        log.exception("could not undo a failed ingest into dataset %s (scans %s)", dataset, ", ".join(e.scan_id for e in entries))
