"""Ingest DICOM: instances de-identified on arrival, series assembled into scans.

Every way in (REST upload, STOW-RS, C-STORE) goes through :func:`receive`, which de-identifies an
instance in memory (or quarantines it when its pixels may show identity) before anything is written,
and then :func:`ingest_series`, which turns one series' de-identified instances into a canonical scan,
stores them (they are the scan's "original") beside the canonical copy, and registers it in the dataset
through the same commit as a NIfTI upload. The raw bytes of an instance never reach the store.

A time series (several volumes at one position: fMRI, DWI, one Siemens mosaic per time point) follows
the project's ``time_series`` option: refused (the default), its first time point kept, or split into
one scan per time point (``<series>-t000``, ...), each storing the instances of its own time point.

Outcomes are per series, never all-or-nothing (:func:`ingest_patient`, the REST upload): every good
series of a patient's upload is stored and every other one reported with its fate
(:class:`SeriesOutcome`): ``refused`` with the reason, ``quarantined`` (pixels that may show identity),
``already-present``, or ``stored-unlabeled`` when the series is good but the mask sent with it is not
(the mask's reason is the warning; the scan is stored without a label map, never dropped). A series is
stored whole or not at all: nothing is half-ingested.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field
from pydicom.dataset import Dataset

from medsynth.core.errors import Conflict, InvalidInput, TooLarge
from medsynth.core.names import check_name
from medsynth.datasets.ingest import commit_scans
from medsynth.datasets.manifest import DicomSource, ManifestVersion, ScanEntry, dataset_prefix, refuse_duplicate
from medsynth.dicom.deid import Deidentifier
from medsynth.dicom.masks import MASK_SOP_CLASSES, describe_coverage, is_mask, read_mask, referenced_series
from medsynth.dicom.series import (INSTANCE_NUMBER, Incomplete, SeriesVolume, check_instance, integer, read_instance, series_label,
                                   series_volume)
from medsynth.io.nifti import check_label_values, to_nifti_bytes
from medsynth.store.projects import TimeSeries

log = logging.getLogger(__name__)

Fate = Literal["stored", "stored-unlabeled", "quarantined", "refused", "already-present"]
#: The fates of a series that is in the dataset now.
STORED: tuple[Fate, ...] = ("stored", "stored-unlabeled")


class SeriesOutcome(BaseModel):
    """What became of one series sent (or of one file that is no series: not DICOM at all)."""

    series_instance_uid: str | None = Field(None, description="As de-identified (remapped); none for a file that is not DICOM.")
    fate: Fate = Field(description="stored; stored-unlabeled (the series is stored, the mask sent with it was not usable: "
                                   "see warnings); quarantined (may show identity in its pixels); refused (see reason); "
                                   "already-present (the same image is in the dataset).")
    reason: str | None = Field(None, description="Why it was refused, quarantined or is already present.")
    warnings: list[str] = Field(default_factory=list, description="What was stored differently from what was sent (an unusable mask).")
    files: list[str] = Field(default_factory=list, description="What was sent: the upload's file names (zip members as "
                                                               "zip:member) of the series and its mask.")
    series_number: int | None = None
    series_description: str | None = Field(None, description="As sent (in the answer to the sender only; never stored).")
    modality: str | None = None
    instances: int = 0
    scan_ids: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Received:
    """One instance after :func:`receive`: de-identified, or quarantined with the reason."""

    name: str
    dataset: Dataset | None
    series_uid: str  # as de-identified
    quarantined: str | None = None
    data: bytes | None = None  # the de-identified Part 10 bytes, when already written out (staged instances)
    label: str = ""  # how the sender knows the instance without its file name: "instance 3 of series 7"
    series_number: int | None = None
    description: str | None = None  # SeriesDescription as sent (never stored: the basic profile removes it)
    modality: str | None = None
    mask_problem: str | None = None  # a mask that cannot be matched to one image series: why

    def payload(self) -> bytes:
        return self.data if self.data is not None else instance_bytes(self.dataset)


def receive(ds: Dataset, name: str, deid: Deidentifier) -> Received:
    """Check and de-identify one instance (in memory). Raises :class:`InvalidInput` for an unusable one.
    A mask travels with the series it was drawn on; one that references no series or several keeps its
    problem (``mask_problem``) for that series' outcome, where it is a warning (the images are stored
    unlabeled) rather than a refusal."""
    check_instance(ds, name)
    if not str(ds.get("PatientID", "") or "").strip():
        raise InvalidInput(f"{name} has no PatientID: without it, scans of one patient cannot be kept together.")
    problem = None
    original = str(ds.SeriesInstanceUID)
    if is_mask(ds):
        try:
            original = referenced_series(ds, name)
        except InvalidInput as exc:
            problem, original = str(exc), _first_referenced(ds) or original
            for uid in _referenced(ds):  # the reason is written down: the series by their de-identified UIDs
                problem = problem.replace(uid, deid.uid(uid))
    sent = {"label": instance_label(ds), "series_number": _number(ds, "SeriesNumber"), "modality": _text(ds, "Modality"),
            "description": _text(ds, "SeriesDescription"), "mask_problem": problem}
    series = deid.uid(original)
    reason = deid.burned_in_reason(ds)
    if reason is not None and not deid.policy.allow_burned_in:
        return Received(name, None, series, f"{name} may show identifying text in its pixels ({reason}); quarantined, not "
                                            "ingested (a project can opt in to such images)", **sent)
    return Received(name, deid.apply(ds), series, **sent)


def instance_label(ds: Dataset) -> str:
    """An instance as its sender knows it without a file name (STOW-RS, C-STORE): ``instance 3 of
    series 7``. InstanceNumber and SeriesNumber survive de-identification, so a staged instance is named
    the same way."""
    number, series = _number(ds, "InstanceNumber"), _number(ds, "SeriesNumber")
    instance = f"instance {number}" if number is not None else "an instance without InstanceNumber"
    return f"{instance} of {f'series {series}' if series is not None else 'a series without SeriesNumber'}"


def _number(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or str(value).strip() == "" else int(float(str(value)))
    except (TypeError, ValueError, OverflowError):
        return None


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        return str(ds.get(keyword, "") or "").strip() or None
    except Exception:  # noqa: BLE001 - a value pydicom cannot decode: not worth refusing the instance for
        return None


def _first_referenced(ds: Dataset) -> str | None:
    """The first series a mask references, however many it references (None when it names none)."""
    return next(iter(_referenced(ds)), None)


def _referenced(ds: Dataset) -> list[str]:
    try:
        return [uid for item in ds.get("ReferencedSeriesSequence") or [] if (uid := str(item.get("SeriesInstanceUID", "") or ""))]
    except (AttributeError, TypeError):
        return []


# --- a patient's upload, series by series ----------------------------------------------------------------


@dataclass
class _Sent:
    """The files of one series in an upload (its mask's too), as they came."""

    uid: str | None  # None: a file that is no series (not DICOM)
    received: list[Received] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    number: int | None = None
    description: str | None = None
    modality: str | None = None
    described_by_image: bool = False

    def add(self, name: str, number: int | None, description: str | None, modality: str | None) -> None:
        self.files.append(name)
        image = modality not in ("SEG", "RTSTRUCT")
        if (image and not self.described_by_image) or len(self.files) == 1:
            self.number, self.description, self.modality = number, description, modality
            self.described_by_image = image

    def quarantine(self) -> str | None:
        return next((r.quarantined for r in self.received if r.quarantined), None)

    def failure(self) -> str:
        more = len(self.failures) - 3
        return "; ".join(self.failures[:3]) + (f"; and {more} more files of the series that cannot be read" if more > 0 else "")

    def outcome(self, fate: Fate) -> SeriesOutcome:
        return SeriesOutcome(series_instance_uid=self.uid, fate=fate, files=list(self.files), series_number=self.number,
                             series_description=self.description, modality=self.modality, instances=len(self.files))


@dataclass
class PatientUpload:
    """What :func:`ingest_patient` did: an outcome per series sent (in the order they came), the scans
    stored (each with the version that holds it), the instances quarantined (name, reason), the error
    class of each refusal, and each sent file's :func:`instance_label` (for what is written down)."""

    outcomes: list[SeriesOutcome]
    stored: list[tuple[ScanEntry, ManifestVersion]]
    quarantined: list[tuple[str, str]]
    errors: list[str]
    labels: dict[str, str]


#: What is read of a file that cannot be read whole, to tell which series it belongs to.
PEEK_TAGS = ["SOPClassUID", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "InstanceNumber",
             "ReferencedSeriesSequence", "ReferencedFrameOfReferenceSequence"]


def _peek(data: bytes, deid: Deidentifier) -> tuple[str, Dataset] | None:
    """The (de-identified) series of a file that is not usable, from what of its header can be read;
    None when that is not even DICOM."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=PEEK_TAGS)
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        if uid and is_mask(ds):
            try:
                uid = referenced_series(ds, "")
            except InvalidInput:
                uid = _first_referenced(ds) or uid
    except Exception:  # noqa: BLE001 - pydicom raises many types for what is not DICOM
        return None
    return (deid.uid(uid), ds) if uid else None


def ingest_patient(store, dataset: str, files: Iterable[tuple[str, bytes]], deid: Deidentifier, *, max_voxels: int,
                   time_series: TimeSeries = "refuse",
                   on_ingested: Callable[[ScanEntry, ManifestVersion], None] | None = None) -> PatientUpload:
    """Ingest one patient's files (``(name, bytes)``, Part 10) series by series: every good series is
    stored, each other one gets its outcome. A series is refused whole (one unreadable or unusable file
    of it refuses it; a volume with a slice taken out would be silently wrong), quarantined whole (one
    instance that may show identity quarantines it), or stored whole; its unusable mask costs only the
    label map (``stored-unlabeled``). The stored series are registered in one new version (one per
    series if another upload took one of their images meanwhile).

    Raises :class:`InvalidInput` for what is the upload's fault rather than a series' (no files, two
    patients); errors of the store propagate (a failed version leaves nothing of itself behind)."""
    check_name(dataset, "dataset name")
    sent: dict[str, _Sent] = {}
    labels: dict[str, str] = {}
    count = 0
    for name, data in files:
        count += 1
        try:
            r = receive(read_instance(data, name), name, deid)
        except InvalidInput as exc:
            peeked = _peek(data, deid)
            if peeked is None:
                group = sent.setdefault(f"\0{count}", _Sent(None))
                group.add(name, None, None, None)
                labels[name] = "a file that is not DICOM"
            else:
                uid, ds = peeked
                group = sent.setdefault(uid, _Sent(uid))
                group.add(name, _number(ds, "SeriesNumber"), _text(ds, "SeriesDescription"), _text(ds, "Modality"))
                labels[name] = instance_label(ds)
            group.failures.append(str(exc))
            continue
        group = sent.setdefault(r.series_uid, _Sent(r.series_uid))
        group.add(name, r.series_number, r.description, r.modality)
        group.received.append(r)
        labels[name] = r.label
    if not count:
        raise InvalidInput("the upload holds no files.")
    patients = {str(r.dataset.PatientID) for g in sent.values() for r in g.received if r.dataset is not None}
    if len(patients) > 1:
        raise InvalidInput(f"the upload holds instances of {len(patients)} patients; upload one patient's study at a time.")

    outcomes: dict[str, SeriesOutcome] = {}
    ready: list[tuple[str, PreparedSeries]] = []
    quarantined: list[tuple[str, str]] = []
    errors: list[str] = []
    instances: dict[str, str] = {}  # SOPInstanceUID → the file that brought it
    images: dict[str, str] = {}  # scan id → the series (its label) that made it, in this upload
    for key, group in sent.items():
        if (reason := group.quarantine()) is not None:
            outcomes[key] = group.outcome("quarantined").model_copy(update={"reason": reason})
            quarantined += [(r.name, r.quarantined or f"{r.name}: its series is quarantined ({reason})") for r in group.received]
            quarantined += [(name, f"{name}: its series is quarantined ({reason})") for name in group.files
                            if name not in {r.name for r in group.received}]
            continue
        try:
            if group.failures:
                raise InvalidInput(group.failure())
            for r in group.received:
                uid = str(r.dataset.SOPInstanceUID)
                if uid in instances:
                    raise InvalidInput(f"{r.name} and {instances[uid]} are the same instance (one SOPInstanceUID): duplicate "
                                       "instances.")
                instances[uid] = r.name
            prepared = prepare_series(store, dataset, group.received, max_voxels=max_voxels, time_series=time_series)
            for scan in prepared.scans:
                if scan.entry.scan_id in images:
                    raise Conflict(f"{scan.entry.original_filename} is the same image as {images[scan.entry.scan_id]} of this "
                                   f"upload (scan {scan.entry.scan_id}, the same content): stored once.")
            images.update({scan.entry.scan_id: scan.entry.original_filename for scan in prepared.scans})
        except Conflict as exc:
            outcomes[key] = group.outcome("already-present").model_copy(update={"reason": str(exc)})
            errors.append(type(exc).__name__)
            continue
        except InvalidInput as exc:  # TooLarge too: one series over MEDSYNTH_MAX_VOXELS
            outcomes[key] = group.outcome("refused").model_copy(update={"reason": str(exc)})
            errors.append(type(exc).__name__)
            continue
        outcomes[key] = group.outcome("stored-unlabeled" if prepared.unlabeled else "stored").model_copy(
            update={"warnings": list(prepared.warnings)})
        ready.append((key, prepared))

    stored = _commit_series(store, dataset, ready, outcomes, errors, on_ingested)
    return PatientUpload(list(outcomes.values()), stored, quarantined, errors, labels)


def _commit_series(store, dataset: str, ready: list[tuple[str, PreparedSeries]], outcomes: dict[str, SeriesOutcome],
                   errors: list[str], on_ingested) -> list[tuple[ScanEntry, ManifestVersion]]:
    """Register the prepared series in one version; when another upload has meanwhile taken one of
    their images (a :class:`Conflict` that leaves nothing written), each series in a version of its own."""
    if not ready:
        return []
    try:
        manifest = commit_scans(store, dataset, [(s.entry, s.objects) for _, p in ready for s in p.scans], on_ingested)
        done = [(key, p, manifest) for key, p in ready]
    except Conflict:
        done = []
        for key, p in ready:
            try:
                done.append((key, p, commit_scans(store, dataset, [(s.entry, s.objects) for s in p.scans], on_ingested)))
            except Conflict as exc:
                outcomes[key] = outcomes[key].model_copy(update={"fate": "already-present", "reason": str(exc), "warnings": []})
                errors.append(type(exc).__name__)
    for key, p, _ in done:
        outcomes[key].scan_ids = [s.entry.scan_id for s in p.scans]
    return [(s.entry, manifest) for _, p, manifest in done for s in p.scans]


def scrub_names(text: str, labels: dict[str, str]) -> str:
    """``text`` with each sent file name (a key of ``labels``) replaced by its instance label, for what
    is written down: a file name, unlike InstanceNumber, may hold anything (a patient's name). Names
    that are all digits are left (they say nothing, and would match numbers)."""
    for name in sorted(labels, key=len, reverse=True):
        if name and not name.isdigit():
            text = re.sub(rf"(?<![\w.]){re.escape(name)}(?![\w.])", lambda _, label=labels[name]: label, text)
    return text


def instance_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class PreparedScan:
    """A series assembled and checked, not yet written: its manifest entry and the objects to store."""

    entry: ScanEntry
    objects: dict[str, bytes]


@dataclass(frozen=True)
class PreparedSeries:
    """The scans a series becomes (one, or one per time point); ``warnings``: a mask sent with it that
    is not used (``unlabeled``: the scans are stored without a label map because of it)."""

    scans: list[PreparedScan]
    warnings: list[str] = field(default_factory=list)
    unlabeled: bool = False


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
    return [p.entry for p in prepared.scans], commit_scans(store, dataset, [(p.entry, p.objects) for p in prepared.scans], on_ingested)


UNLABELED = "mask not used, the series is stored unlabeled: "


def prepare_series(store, dataset: str, instances: Sequence[Received], *, max_voxels: int,
                   time_series: TimeSeries = "refuse") -> PreparedSeries:
    """The checks and the work of :func:`ingest_series` short of writing (one read per scan: the
    duplicate check): one scan, or for a time series what ``time_series`` says. ``instances`` may
    include one mask (DICOM-SEG or RTSTRUCT) drawn on the series: it becomes the label map. A mask that
    cannot be used (several masks, overlapping segments under the refuse rule, off the series'
    grid, a mask on a time series, ...) does not cost the series: its reason
    is a warning and the scans are stored without a label map. Raises :class:`InvalidInput` (an
    :class:`~medsynth.dicom.series.Incomplete` one where more instances might complete the series),
    :class:`TooLarge` or :class:`Conflict` for the series."""
    check_name(dataset, "dataset name")
    masks = [r for r in instances if is_mask(r.dataset)]
    images = sorted((r for r in instances if not is_mask(r.dataset)),
                    key=lambda r: (integer(r.dataset, INSTANCE_NUMBER, r.name, 0), str(r.dataset.SOPInstanceUID)))
    if not images:
        kind = MASK_SOP_CLASSES[str(masks[0].dataset.SOPClassUID)]
        if masks[0].mask_problem:
            raise InvalidInput(masks[0].mask_problem)
        raise Incomplete(f"{masks[0].name} ({kind}) references series {masks[0].series_uid}, which is not here: send the "
                         "images with their mask.")
    warnings: list[str] = []
    mask = None
    if len(masks) > 1:
        warnings.append(f"{UNLABELED}{len(masks)} masks ({', '.join(m.name for m in masks)}) reference one series; send one.")
    elif masks and masks[0].mask_problem:
        warnings.append(UNLABELED + masks[0].mask_problem)
    elif masks:
        mask = masks[0]
    first = images[0].dataset
    label = series_label(first)
    volume = series_volume([(r.name, r.dataset) for r in images], max_voxels=max_voxels)
    times = volume.image.shape[3]
    if times == 1:
        scan = _prepare(store, dataset, volume, images, mask, label, None, warnings)
        return PreparedSeries([scan], warnings, unlabeled=bool(masks) and scan.entry.label_key is None)
    if time_series == "refuse":
        raise InvalidInput(f"{label} is a time series ({times} time points), which this project refuses: its DICOM option "
                           "time_series can keep the 'first' time point or 'split' the series into one scan per time point.")
    if mask is not None:
        warnings.append(f"{UNLABELED}{label} is a time series ({times} time points) sent with a mask ({mask.name}); masks are "
                        "taken on 2D and 3D series only.")
    prepared = [_prepare(store, dataset, volume.at(t), [r for r in images if str(r.dataset.SOPInstanceUID) in volume.instances(t)],
                         None, label, (t, times), warnings)
                for t in ([0] if time_series == "first" else range(times))]
    seen: dict[str, int] = {}
    for t, p in enumerate(prepared):
        if (earlier := seen.setdefault(p.entry.scan_id, t)) != t:
            raise InvalidInput(f"{label}: time points {earlier} and {t} are the same volume, voxel for voxel; a time series "
                               "split into scans needs each to differ.")
    return PreparedSeries(prepared, warnings, unlabeled=bool(masks))


def _prepare(store, dataset: str, volume: SeriesVolume, images: Sequence[Received], mask: Received | None, label: str,
             time: tuple[int, int] | None, warnings: list[str]) -> PreparedScan:
    """One scan: ``volume`` (3D, or one time point) from ``images`` (the instances it is stored as);
    a ``mask`` that does not fit it is left out, its reason added to ``warnings``."""
    first = images[0].dataset
    mask_label, names, coverage = (None, {}, None)
    if mask is not None:
        try:
            read = read_mask(mask.dataset, volume, mask.name)
            mask_label, names = check_label_values(read.label), read.names
        except InvalidInput as exc:
            warnings.append(UNLABELED + str(exc))
            mask, mask_label, names = None, None, {}
        else:
            if partial := describe_coverage(read, mask.dataset, mask.name):
                warnings.append(f"{partial}: they are stored as such (the scan's coverage), and views flag them unlabeled.")
                coverage = np.broadcast_to(read.covered[None, None, :], read.label.shape).astype(np.uint8)
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
    if coverage is not None:  # reoriented as the label map was, voxel for voxel
        label_keys["coverage_key"] = f"{base}canonical/coverage.nii.gz"
        objects[label_keys["coverage_key"]] = to_nifti_bytes(volume.canonical(coverage).label, scan.affine)
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
