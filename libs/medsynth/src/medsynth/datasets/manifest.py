"""Versioned dataset manifests, at a flat cost per upload.

Version ``v`` of a dataset is the list of the scans its first ``v`` entries added — one scan per
upload, or every series of a DICOM upload at once. Its storage under ``datasets/<name>/``:

- ``entries/v<NNNNNNNNNN>.json`` — the scans that version ``v`` added. Created with the store's atomic
  create-if-absent: that is how an upload claims the next version, so concurrent uploads never
  overwrite each other (the loser of a race moves on to the next number).
- ``scan-ids/<scan_id>.json`` — claimed (create-if-absent) before the upload writes anything under the
  scan's keys, and kept once its entry is written: the same image cannot enter a dataset twice, only the
  claim's holder writes the objects its entry names, and finding a duplicate costs one read, not a walk
  through every scan.
- ``manifests/v<NNNNNN>.json`` — a full manifest, written every :data:`SNAPSHOT_EVERY` versions (and,
  in datasets made before entries existed, at every version). Reading version ``v`` takes the
  newest snapshot at or below it plus the entries after it.
- ``head.json`` — the newest version its last writer saw: a hint, probed forward, never trusted alone.

An upload therefore writes one claim per scan, its objects, one entry, the hint and, once in
:data:`SNAPSHOT_EVERY` uploads, a snapshot — not a full copy of a manifest that grows with the dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from medsynth.core.clock import utcnow
from medsynth.core.errors import Conflict, MedsynthError, NotFound
from medsynth.core.names import check_name
from medsynth.store import ObjectStore

log = logging.getLogger(__name__)

SNAPSHOT_EVERY = 100
MAX_COMMIT_TRIES = 1000
#: A scan-id claim whose upload never wrote its entry (the uploader died) is taken over after this.
STALE_CLAIM = timedelta(minutes=10)


class DicomSource(BaseModel):
    """Where a scan ingested from DICOM came from, in de-identified terms (UIDs as remapped)."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str = ""
    sop_class_uid: str
    transfer_syntax_uid: str
    instances: int = Field(description="De-identified instances stored under original_image_key.")
    deidentification: list[str] = Field(default_factory=list, description="DeidentificationMethod of the stored instances.")
    mask: Literal["DICOM-SEG", "RTSTRUCT"] | None = Field(None, description="What the label map was made from.")
    time_point: int | None = Field(None, description="Which time point (from 0) of a time series this scan is, when the "
                                   "project keeps the first one or splits the series; None for a 2D or 3D series.")
    time_points: int | None = Field(None, description="How many time points that series has.")


class ScanEntry(BaseModel):
    scan_id: str = Field(description="First 16 hex digits of image_sha256.")
    patient_id: str
    image_sha256: str = Field(description="SHA-256 of the uploaded NIfTI image, or for DICOM of the canonical volume.")
    label_sha256: str | None = None
    original_image_key: str = Field(description="The NIfTI as uploaded (free-text header fields cleared), or for DICOM "
                                    "the folder of its de-identified instances.")
    original_label_key: str | None = None
    image_key: str = Field(description="Canonical copy: RAS orientation, float32, .nii.gz.")
    label_key: str | None = None
    coverage_key: str | None = Field(None, exclude_if=lambda v: v is None,
                                     description="Canonical 0/1 volume: where the label map says anything (a DICOM-SEG "
                                                 "drawn on some slices); None: everywhere it is given.")
    shape: list[int]
    spacing: list[float]
    orientation: str
    label_values: list[int] = Field(default_factory=list)
    label_names: dict[int, str] = Field(default_factory=dict, description="Segment or ROI name of each label value (DICOM masks), or the "
                                           "name an upload's label_names gave it.")
    original_filename: str
    ingested_at: datetime = Field(default_factory=utcnow)
    source_format: Literal["nifti", "dicom"] = "nifti"
    dicom: DicomSource | None = None


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


class ManifestVersion(BaseModel):
    """What a commit made: the dataset's new version number."""

    dataset: str
    version: int
    created_at: datetime


class _Entry(BaseModel):
    version: int
    created_at: datetime
    scan: ScanEntry
    more: list[ScanEntry] = Field(default_factory=list, description="The other scans of an upload that added several.")

    @property
    def scans(self) -> list[ScanEntry]:
        return [self.scan, *self.more]


class _Claim(BaseModel):
    scan_id: str
    patient_id: str
    original_filename: str
    claimed_at: datetime


def dataset_prefix(dataset: str) -> str:
    return f"datasets/{check_name(dataset, 'dataset name')}/"


def manifest_key(dataset: str, version: int) -> str:
    """The full-manifest snapshot of ``version`` (not every version has one)."""
    return f"{dataset_prefix(dataset)}manifests/v{version:06d}.json"


def entry_key(dataset: str, version: int) -> str:
    return f"{dataset_prefix(dataset)}entries/v{version:010d}.json"


def _claim_key(dataset: str, scan_id: str) -> str:
    return f"{dataset_prefix(dataset)}scan-ids/{check_name(scan_id, 'scan id')}.json"


def _head_key(dataset: str) -> str:
    return f"{dataset_prefix(dataset)}head.json"


def _snapshots(store: ObjectStore, dataset: str) -> list[int]:
    prefix = f"{dataset_prefix(dataset)}manifests/v"
    return sorted(int(k[len(prefix) : -len(".json")]) for k in store.list(prefix) if k.endswith(".json"))


def list_versions(store: ObjectStore, dataset: str) -> list[int]:
    return list(range(1, latest_version(store, dataset) + 1))


def list_datasets(store: ObjectStore) -> list[str]:
    return sorted({k.split("/")[1] for k in store.list("datasets/") if k.endswith("head.json") or "/manifests/" in k})


def latest_version(store: ObjectStore, dataset: str) -> int:
    """The newest version (0 for a dataset with no scans): the hint in head.json, probed forward."""
    try:
        version = int(store.get_json(_head_key(dataset))["version"])
    except (NotFound, KeyError, TypeError, ValueError):
        snapshots = _snapshots(store, dataset)
        version = snapshots[-1] if snapshots else 0
    while store.exists(entry_key(dataset, version + 1)):
        version += 1
    return version


def _entries(store: ObjectStore, dataset: str, first: int, last: int) -> Iterator[_Entry]:
    for v in range(first, last + 1):
        try:
            yield _Entry.model_validate(store.get_json(entry_key(dataset, v)))
        except NotFound:
            raise MedsynthError(f"dataset {dataset!r}: version {v} has no entry (the store lost an object)") from None


def load_manifest(store: ObjectStore, dataset: str, version: int | None = None) -> DatasetManifest:
    """The given version of a dataset's manifest, or its newest. Raises :class:`NotFound`."""
    newest = latest_version(store, dataset)
    if newest == 0:
        raise NotFound(f"dataset {dataset!r} has no scans yet")
    version = newest if version is None else version
    if not 1 <= version <= newest:
        raise NotFound(f"dataset {dataset!r} has no version {version}")
    base = next((s for s in reversed(_snapshots(store, dataset)) if s <= version), 0)
    if base:
        manifest = DatasetManifest.model_validate(store.get_json(manifest_key(dataset, base)))
    else:
        manifest = DatasetManifest(dataset=dataset)
    for entry in _entries(store, dataset, base + 1, version):
        manifest.scans.extend(entry.scans)
        manifest.version, manifest.created_at = entry.version, entry.created_at
    return manifest


def find_scan(store: ObjectStore, dataset: str, scan_id: str) -> _Claim | None:
    """Who holds ``scan_id`` in ``dataset`` (one read), or None."""
    try:
        return _Claim.model_validate(store.get_json(_claim_key(dataset, scan_id)))
    except NotFound:
        return None


def refuse_duplicate(store: ObjectStore, dataset: str, scan_id: str) -> None:
    """Raise :class:`Conflict` if the dataset already holds a scan with this id (same image bytes)."""
    claim = find_scan(store, dataset, scan_id)
    if claim is not None:
        raise _duplicate(dataset, claim)


def _duplicate(dataset: str, claim: _Claim) -> Conflict:
    return Conflict(
        f"scan {claim.scan_id} (same image content) is already in dataset {dataset!r} as patient "
        f"{claim.patient_id!r}, file {claim.original_filename!r}"
    )


def add_scan(store: ObjectStore, dataset: str, entry: ScanEntry) -> ManifestVersion:
    """Claim the scan's id, then append it as the next version; :class:`Conflict` if its image is
    already there."""
    return add_scans(store, dataset, [entry])


def add_scans(store: ObjectStore, dataset: str, entries: Sequence[ScanEntry]) -> ManifestVersion:
    """:func:`claim_scans`, then :func:`append_scans`; the claims are released if the append fails."""
    claim_scans(store, dataset, entries)
    try:
        return append_scans(store, dataset, entries)
    except BaseException:
        release_claims(store, dataset, entries)
        raise


def claim_scans(store: ObjectStore, dataset: str, entries: Sequence[ScanEntry]) -> None:
    """Claim every scan id of ``entries`` for one upload, all or none: :class:`Conflict` (after releasing
    what this call claimed) if an image is already in the dataset or twice in ``entries``. Until the
    claims are released (:func:`release_claims`) or the scans appended, only their holder may write under
    the scans' keys. A claim whose entry never appeared (its uploader died) is taken over after
    :data:`STALE_CLAIM`."""
    seen: dict[str, ScanEntry] = {}
    for entry in entries:
        if entry.scan_id in seen:
            raise Conflict(f"{seen[entry.scan_id].original_filename} and {entry.original_filename} are one image (scan "
                           f"{entry.scan_id}, the same content): upload it once.")
        seen[entry.scan_id] = entry
    _migrate_claims(store, dataset)
    claimed: list[ScanEntry] = []
    try:
        for entry in entries:
            _claim(store, dataset, entry)
            claimed.append(entry)
    except BaseException:
        release_claims(store, dataset, claimed)
        raise


def release_claims(store: ObjectStore, dataset: str, entries: Sequence[ScanEntry]) -> None:
    """Give up the claims of scans that will not be appended."""
    for entry in entries:
        store.delete(_claim_key(dataset, entry.scan_id))


def append_scans(store: ObjectStore, dataset: str, entries: Sequence[ScanEntry]) -> ManifestVersion:
    """Register claimed scans as one new version (their entry is the commit: all of them or none)."""
    if not entries:
        raise ValueError("append_scans needs at least one scan")
    return _append(store, dataset, list(entries))


def _claim(store: ObjectStore, dataset: str, entry: ScanEntry) -> None:
    claim = _Claim(scan_id=entry.scan_id, patient_id=entry.patient_id, original_filename=entry.original_filename, claimed_at=utcnow())
    if store.put_if_absent(_claim_key(dataset, entry.scan_id), claim.model_dump_json().encode()):
        return
    held = find_scan(store, dataset, entry.scan_id)
    if held is None or utcnow() - held.claimed_at < STALE_CLAIM or _registered(store, dataset, entry.scan_id):
        raise _duplicate(dataset, held or claim)
    log.warning("taking over the stale claim on scan %s in dataset %s (claimed %s)", entry.scan_id, dataset, held.claimed_at)
    store.put_json(_claim_key(dataset, entry.scan_id), claim.model_dump(mode="json"))


def _migrate_claims(store: ObjectStore, dataset: str) -> None:
    """A dataset made before claims and entries (full manifests only, no head.json): claim its scans
    once, so that duplicates of them are refused like any other."""
    if store.exists(_head_key(dataset)) or not _snapshots(store, dataset):
        return
    manifest = load_manifest(store, dataset)
    for scan in manifest.scans:
        claim = _Claim(scan_id=scan.scan_id, patient_id=scan.patient_id, original_filename=scan.original_filename, claimed_at=scan.ingested_at)
        store.put_if_absent(_claim_key(dataset, scan.scan_id), claim.model_dump_json().encode())
    store.put_json(_head_key(dataset), {"version": manifest.version})


def _registered(store: ObjectStore, dataset: str, scan_id: str) -> bool:
    """Whether the dataset's newest manifest lists ``scan_id`` (the slow path: a suspect claim only)."""
    try:
        return load_manifest(store, dataset).find(scan_id) is not None
    except NotFound:
        return False


def _append(store: ObjectStore, dataset: str, scans: list[ScanEntry]) -> ManifestVersion:
    """Write the entry of the next free version; once it is written the commit has happened, and
    nothing after it (the hint, a snapshot) may fail the call."""
    version = latest_version(store, dataset)
    for _ in range(MAX_COMMIT_TRIES):
        version += 1
        entry = _Entry(version=version, created_at=utcnow(), scan=scans[0], more=scans[1:])
        if store.put_if_absent(entry_key(dataset, version), entry.model_dump_json().encode()):
            _after_commit(store, dataset, version)
            return ManifestVersion(dataset=dataset, version=version, created_at=entry.created_at)
    raise MedsynthError(f"could not commit a new version of dataset {dataset!r} after {MAX_COMMIT_TRIES} tries")


def _after_commit(store: ObjectStore, dataset: str, version: int) -> None:
    try:
        store.put_json(_head_key(dataset), {"version": version})  # a hint: a stale one is probed past
    except Exception:  # noqa: BLE001 - the entry is written: the version exists whatever the hint says
        log.exception("could not update the head hint of dataset %s to version %d", dataset, version)
    if version % SNAPSHOT_EVERY == 0:
        _snapshot(store, dataset, version)


def _snapshot(store: ObjectStore, dataset: str, version: int) -> None:
    """Write the full manifest of ``version``; best effort (a missing snapshot only makes reads longer)."""
    try:
        manifest = load_manifest(store, dataset, version)
        store.put_if_absent(manifest_key(dataset, version), manifest.model_dump_json(indent=1).encode())
    except Exception:  # noqa: BLE001 - the commit itself has succeeded
        log.exception("could not write the snapshot of dataset %s version %d", dataset, version)
