"""Ingest DICOM: instances de-identified on arrival, series assembled into scans.

Every way in (REST upload, STOW-RS, C-STORE) goes through :func:`receive`, which de-identifies an
instance in memory (or quarantines it when its pixels may show identity) before anything is written,
and then :func:`ingest_series`, which turns one series' de-identified instances into a canonical scan,
stores them (they are the scan's "original") beside the canonical copy, and registers it in the dataset
through the same commit as a NIfTI upload. The raw bytes of an instance never reach the store.

A time series (several volumes at one position: fMRI, DWI, one Siemens mosaic per time point) follows
the project's ``time_series`` option: refused (the default), its first time point kept, or split into
one scan per time point (``<series>-t000``, ...), each storing the instances of its own time point.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from medsynth.core.errors import InvalidInput
from medsynth.core.names import check_name
from medsynth.datasets.ingest import commit_scans
from medsynth.datasets.manifest import DicomSource, ManifestVersion, ScanEntry, dataset_prefix, refuse_duplicate
from medsynth.dicom.deid import Deidentifier
from medsynth.dicom.masks import MASK_SOP_CLASSES, is_mask, label_map, referenced_series
from medsynth.dicom.series import INSTANCE_NUMBER, SeriesVolume, check_instance, integer, series_label, series_volume
from medsynth.io.nifti import check_label_values, to_nifti_bytes
from medsynth.store.projects import TimeSeries


@dataclass(frozen=True)
class Received:
    """One instance after :func:`receive`: de-identified, or quarantined with the reason."""

    name: str
    dataset: Dataset | None
    series_uid: str  # as de-identified
    quarantined: str | None = None
    data: bytes | None = None  # the de-identified Part 10 bytes, when already written out (staged instances)

    def payload(self) -> bytes:
        return self.data if self.data is not None else instance_bytes(self.dataset)


def receive(ds: Dataset, name: str, deid: Deidentifier) -> Received:
    """Check and de-identify one instance (in memory). Raises :class:`InvalidInput` for an unusable one."""
    check_instance(ds, name)
    if not str(ds.get("PatientID", "") or "").strip():
        raise InvalidInput(f"{name} has no PatientID: without it, scans of one patient cannot be kept together.")
    # a mask travels with the series it was drawn on
    series = deid.uid(referenced_series(ds, name) if is_mask(ds) else str(ds.SeriesInstanceUID))
    reason = deid.burned_in_reason(ds)
    if reason is not None and not deid.policy.allow_burned_in:
        return Received(name, None, series, f"{name} may show identifying text in its pixels ({reason}); quarantined, not "
                                            "ingested (a project can opt in to such images)")
    return Received(name, deid.apply(ds), series)


def quarantined_series(received: Sequence[Received]) -> list[Received]:
    """``received`` with every instance of a series that has a quarantined instance quarantined too: a
    volume with a slice taken out would be silently wrong."""
    bad = {r.series_uid: r for r in received if r.quarantined}
    return [r if r.quarantined or r.series_uid not in bad else
            Received(r.name, None, r.series_uid, f"{r.name}: its series is quarantined ({bad[r.series_uid].quarantined})")
            for r in received]


def group_series(received: Sequence[Received]) -> dict[str, list[Received]]:
    """De-identified instances by (remapped) SeriesInstanceUID, series with a quarantined instance left
    out; refuses duplicate SOP instances and, in one upload, more than one patient."""
    kept = [r for r in quarantined_series(received) if r.dataset is not None]
    patients = {str(r.dataset.PatientID) for r in kept}
    if len(patients) > 1:
        raise InvalidInput(f"the upload holds instances of {len(patients)} patients; upload one patient's study at a time.")
    seen: dict[str, str] = {}
    series: dict[str, list[Received]] = {}
    for r in kept:
        uid = str(r.dataset.SOPInstanceUID)
        if uid in seen:
            raise InvalidInput(f"{r.name} and {seen[uid]} are the same instance (one SOPInstanceUID): duplicate instances.")
        seen[uid] = r.name
        series.setdefault(r.series_uid, []).append(r)
    return series


def instance_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class PreparedScan:
    """A series assembled and checked, not yet written: its manifest entry and the objects to store."""

    entry: ScanEntry
    objects: dict[str, bytes]


def ingest_series(
    store,
    dataset: str,
    instances: Sequence[Received],
    *,
    max_voxels: int,
    time_series: TimeSeries = "refuse",
    on_ingested: Callable[[ScanEntry, ManifestVersion], None] | None = None,
) -> tuple[list[ScanEntry], ManifestVersion]:
    """Assemble one series of de-identified instances into its scans (one, or one per time point) and
    register them in one version. Raises :class:`InvalidInput` (naming the series), :class:`TooLarge`
    or :class:`Conflict` (already in the dataset) before anything is written."""
    prepared = prepare_series(store, dataset, instances, max_voxels=max_voxels, time_series=time_series)
    return [p.entry for p in prepared], commit_scans(store, dataset, [(p.entry, p.objects) for p in prepared], on_ingested)


def prepare_series(store, dataset: str, instances: Sequence[Received], *, max_voxels: int,
                   time_series: TimeSeries = "refuse") -> list[PreparedScan]:
    """The checks and the work of :func:`ingest_series` short of writing (one read per scan: the
    duplicate check): one scan, or for a time series what ``time_series`` says. ``instances`` may
    include one mask (DICOM-SEG or RTSTRUCT) drawn on the series: it becomes the label map."""
    check_name(dataset, "dataset name")
    masks = [r for r in instances if is_mask(r.dataset)]
    images = sorted((r for r in instances if not is_mask(r.dataset)),
                    key=lambda r: (integer(r.dataset, INSTANCE_NUMBER, r.name, 0), str(r.dataset.SOPInstanceUID)))
    if not images:
        kind = MASK_SOP_CLASSES[str(masks[0].dataset.SOPClassUID)]
        raise InvalidInput(f"{masks[0].name} ({kind}) references series {masks[0].series_uid}, which is not here: send the "
                           "images with their mask.")
    if len(masks) > 1:
        raise InvalidInput(f"{len(masks)} masks ({', '.join(m.name for m in masks)}) reference one series; send one.")
    first = images[0].dataset
    label = series_label(first)
    volume = series_volume([(r.name, r.dataset) for r in images], max_voxels=max_voxels)
    times = volume.image.shape[3]
    if times == 1:
        return [_prepare(store, dataset, volume, images, masks[0] if masks else None, label, None)]
    if time_series == "refuse":
        raise InvalidInput(f"{label} is a time series ({times} time points), which this project refuses: its DICOM option "
                           "time_series can keep the 'first' time point or 'split' the series into one scan per time point.")
    if masks:
        raise InvalidInput(f"{label} is a time series ({times} time points) sent with a mask ({masks[0].name}); masks are "
                           "taken on 2D and 3D series only.")
    prepared = [_prepare(store, dataset, volume.at(t), [r for r in images if str(r.dataset.SOPInstanceUID) in volume.instances(t)],
                         None, label, (t, times))
                for t in ([0] if time_series == "first" else range(times))]
    seen: dict[str, int] = {}
    for t, p in enumerate(prepared):
        if (earlier := seen.setdefault(p.entry.scan_id, t)) != t:
            raise InvalidInput(f"{label}: time points {earlier} and {t} are the same volume, voxel for voxel; a time series "
                               "split into scans needs each to differ.")
    return prepared


def _prepare(store, dataset: str, volume: SeriesVolume, images: Sequence[Received], mask: Received | None, label: str,
             time: tuple[int, int] | None) -> PreparedScan:
    """One scan: ``volume`` (3D, or one time point) from ``images`` (the instances it is stored as)."""
    first = images[0].dataset
    mask_label, names = (None, {})
    if mask is not None:
        raw, names = label_map(mask.dataset, volume, mask.name)
        mask_label = check_label_values(raw)
    scan = volume.canonical(mask_label)
    patient_id = check_name(str(first.PatientID), "patient pseudonym")
    canonical = to_nifti_bytes(scan.image, scan.affine)
    image_sha = hashlib.sha256(canonical).hexdigest()
    scan_id = image_sha[:16]
    refuse_duplicate(store, dataset, scan_id)
    base = f"{dataset_prefix(dataset)}scans/{patient_id}/{scan_id}/"
    folder = f"{base}original/dicom/"
    objects = {f"{folder}{i:05d}.dcm": r.payload() for i, r in enumerate(images)}
    objects[f"{base}canonical/image.nii.gz"] = canonical
    label_keys: dict[str, str | None] = {"original_label_key": None, "label_key": None}
    label_sha = None
    if scan.label is not None:
        mask_bytes = mask.payload()
        label_sha = hashlib.sha256(mask_bytes).hexdigest()
        label_keys = {"original_label_key": f"{base}original/mask.dcm", "label_key": f"{base}canonical/label.nii.gz"}
        objects[label_keys["original_label_key"]] = mask_bytes
        objects[label_keys["label_key"]] = to_nifti_bytes(scan.label, scan.affine)
    entry = ScanEntry(
        scan_id=scan_id,
        patient_id=patient_id,
        image_sha256=image_sha,
        label_sha256=label_sha,
        original_image_key=folder,
        image_key=f"{base}canonical/image.nii.gz",
        **label_keys,
        shape=list(scan.shape),
        spacing=[float(s) for s in scan.spacing],
        orientation=scan.orientation,
        label_values=list(scan.label_values),
        label_names={value: names[value] for value in scan.label_values if value in names},
        original_filename=label if time is None else f"{label}-t{time[0]:03d}",
        source_format="dicom",
        dicom=DicomSource(
            study_instance_uid=str(first.StudyInstanceUID),
            series_instance_uid=str(first.SeriesInstanceUID),
            modality=str(first.get("Modality", "") or ""),
            sop_class_uid=str(first.SOPClassUID),
            transfer_syntax_uid=str(first.file_meta.TransferSyntaxUID),
            instances=len(images),
            deidentification=_values(first.get("DeidentificationMethod")),
            mask=MASK_SOP_CLASSES[str(mask.dataset.SOPClassUID)] if mask is not None else None,
            time_point=None if time is None else time[0],
            time_points=None if time is None else time[1],
        ),
    )
    return PreparedScan(entry, objects)


def _values(value: object) -> list[str]:
    if value is None or value == "":
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]
