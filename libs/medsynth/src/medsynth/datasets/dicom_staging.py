"""Series that arrive one instance at a time (STOW-RS, C-STORE) wait here until they are complete.

A de-identified instance is staged under ``dicom/staging/<dataset>/<series>/<sop>.dcm`` of its project
and the series' record ``dicom/series/<dataset>/<series>.json`` notes when the last one came. A series is
assembled when someone commits it (``POST /v1/datasets/{d}/dicom/commit``) or when no instance has come
for ``MEDSYNTH_DICOM_QUIET_S`` (:func:`commit_quiet`, run by the ingest service). Its record then says
``ingested`` (with the scan id: ids, for a time series the project splits; ``stored-unlabeled`` with a
warning when the mask sent with it could not be used), ``rejected`` (with the reason) or ``quarantined``,
and its staged instances are removed.
Records are how a sender finds out what became of a series (``GET /v1/datasets/{d}/dicom/series``): every
series sent, by any way in (:func:`record_outcomes` writes those of REST uploads), with its fate.

An instance that may show identity in its pixels quarantines its series: a marker
(``dicom/staging/<dataset>/<series>/quarantined.json``) refuses the series' later instances
(:class:`SeriesQuarantined`) and, once the series is quiet, its staged instances are removed and its
record says ``quarantined``. Refusals name instances as the sender knows them (``instance 3 of series
7``), never by the staged file's (de-identified) name.

What arrived together can be judged before it is acknowledged: :func:`assess` says whether a series
would be stored as it stands (``ok``), may be once more instances come (``pending``), is already in the
dataset (``present``) or cannot be whatever comes (``refused``; :func:`reject` then decides it at once).

Concurrent committers (several ingest replicas) are safe: the dataset's scan-id claim lets one register
the scan; the other sees the same content already there and records the same outcome.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Literal

from pydantic import BaseModel, Field

from medsynth.core.clock import utcnow
from medsynth.core.errors import Conflict, InvalidInput, NotFound, TooLarge
from medsynth.core.names import check_name
from medsynth.datasets.dicom_ingest import (Fate, Received, SeriesOutcome, instance_bytes, instance_label, prepare_series,
                                            scrub_names)
from medsynth.datasets.ingest import commit_scans
from medsynth.datasets.manifest import ManifestVersion, ScanEntry
from medsynth.dicom.masks import is_mask
from medsynth.dicom.series import Incomplete, read_instance
from medsynth.store.projects import TimeSeries

log = logging.getLogger(__name__)


class SeriesRecord(BaseModel):
    series_instance_uid: str = Field(description="As de-identified (remapped).")
    state: Literal["staged", "ingested", "rejected", "quarantined"]
    fate: Fate | None = Field(None, description="What became of it: stored, stored-unlabeled (its mask was not usable: see "
                              "warnings), quarantined, refused, already-present; none while staged, unless already known "
                              "(quarantined).")
    source: str = Field("", description="How the instances came: upload, stow-rs, c-store:<calling AE title>.")
    series_number: int | None = None
    modality: str | None = None
    first_received_at: datetime = Field(default_factory=utcnow)
    last_received_at: datetime = Field(default_factory=utcnow)
    instances: int = 0
    scan_id: str | None = None
    scan_ids: list[str] = Field(default_factory=list, description="Every scan the series became: one, or one per time "
                                "point of a time series the project splits (scan_id is the first).")
    reason: str | None = None
    warnings: list[str] = Field(default_factory=list, description="What was stored differently from what was sent (an "
                                "unusable mask: the series is stored unlabeled).")
    decided_at: datetime | None = None


class SeriesQuarantined(InvalidInput):
    """An instance of a series that is quarantined (another of its instances may show identity)."""


STAGING = "dicom/staging/"
RECORDS = "dicom/series/"


def _staging(dataset: str, series: str) -> str:
    return f"{STAGING}{check_name(dataset, 'dataset name')}/{check_name(series, 'series uid')}/"


def _record_key(dataset: str, series: str) -> str:
    return f"{RECORDS}{check_name(dataset, 'dataset name')}/{check_name(series, 'series uid')}.json"


def _marker(dataset: str, series: str) -> str:
    return f"{_staging(dataset, series)}{QUARANTINED}"


QUARANTINED = "quarantined.json"


def stage(store, dataset: str, received: Received, *, source: str) -> SeriesRecord:
    """Keep one de-identified instance until its series is committed (a resent instance replaces itself).
    :class:`SeriesQuarantined`, with nothing kept, when its series has been quarantined while staged."""
    series = received.series_uid
    record = _read(store, dataset, series)
    if record is not None and record.state == "staged" and (reason := quarantine_reason(store, dataset, series)):
        _touch(store, dataset, record)
        raise SeriesQuarantined(f"{received.label}: its series is quarantined ({reason})")
    store.put_bytes(f"{_staging(dataset, series)}{check_name(str(received.dataset.SOPInstanceUID), 'SOP instance uid')}.dcm",
                    instance_bytes(received.dataset))
    if record is None or record.state != "staged":  # a new series, or instances again after a decision
        record = _new_record(received, source)
    _touch(store, dataset, record)  # one write per instance; counting them is left to whoever asks (records())
    return record


def quarantine(store, dataset: str, received: Received, *, source: str) -> SeriesRecord:
    """Note that ``received`` (quarantined by :func:`~medsynth.datasets.dicom_ingest.receive`) quarantines
    its series: its later instances are refused, and once it is quiet it is decided ``quarantined``."""
    series = received.series_uid
    record = _read(store, dataset, series)
    if record is None or record.state != "staged":
        record = _new_record(received, source)
    if not quarantine_reason(store, dataset, series):
        reason = scrub_names(received.quarantined or "quarantined", {received.name: received.label})
        store.put_bytes(_marker(dataset, series), json.dumps({"reason": reason}).encode(), content_type="application/json")
    _touch(store, dataset, record)
    return record


def _new_record(received: Received, source: str) -> SeriesRecord:
    image = received.modality not in ("SEG", "RTSTRUCT")
    return SeriesRecord(series_instance_uid=received.series_uid, state="staged", source=source, first_received_at=utcnow(),
                        series_number=received.series_number if image else None, modality=received.modality if image else None)


def _touch(store, dataset: str, record: SeriesRecord) -> None:
    record.last_received_at = utcnow()
    _write(store, dataset, record)


def quarantine_reason(store, dataset: str, series: str) -> str | None:
    try:
        return str(store.get_json(_marker(dataset, series)).get("reason") or "quarantined")
    except NotFound:
        return None


def _staged_keys(store, dataset: str, series: str) -> list[str]:
    return sorted(k for k in store.list(_staging(dataset, series)) if k.endswith(".dcm"))


def _read(store, dataset: str, series: str) -> SeriesRecord | None:
    try:
        return SeriesRecord.model_validate(store.get_json(_record_key(dataset, series)))
    except NotFound:
        return None


def _write(store, dataset: str, record: SeriesRecord) -> None:
    store.put_bytes(_record_key(dataset, record.series_instance_uid), record.model_dump_json(indent=2).encode(),
                    content_type="application/json")


def records(store, dataset: str) -> list[SeriesRecord]:
    """Every series record of ``dataset``, in the order the series first came."""
    return sorted((r for _, r in series_records(store, dataset)), key=lambda r: r.first_received_at)


def series_records(store, dataset: str, *, after: str | None = None) -> Iterator[tuple[str, SeriesRecord]]:
    """(series UID, record) of ``dataset``'s series in UID order from the first after ``after``, each
    read when reached (a staged one with its instances counted and any quarantine found meanwhile)."""
    prefix = f"{RECORDS}{check_name(dataset, 'dataset name')}/"
    uids = sorted(k[len(prefix):-len(".json")] for k in store.list(prefix) if k.endswith(".json") and "/" not in k[len(prefix):])
    for uid in uids:
        if after is not None and uid <= after:
            continue
        record = _read(store, dataset, uid)
        if record is None:
            continue
        if record.state == "staged":
            record.instances = len(_staged_keys(store, dataset, record.series_instance_uid))
            if reason := quarantine_reason(store, dataset, record.series_instance_uid):
                record.fate, record.reason = "quarantined", reason
        yield uid, record


def record_outcomes(store, dataset: str, outcomes: list[SeriesOutcome], labels: dict[str, str], *, source: str = "upload") -> None:
    """Write down what became of the series of a REST upload, as :func:`commit` does for staged ones
    (sent file names replaced by :func:`~medsynth.datasets.dicom_ingest.instance_label` s; the sent
    SeriesDescription left out). A series staged meanwhile by STOW-RS or C-STORE keeps its record."""
    now = utcnow()
    for outcome in outcomes:
        if outcome.series_instance_uid is None:
            continue  # a file that is no series: the upload's answer names it
        current = _read(store, dataset, outcome.series_instance_uid)
        if current is not None and (current.state == "staged" or (current.state == "ingested" and outcome.fate == "already-present")):
            continue  # staged meanwhile by STOW-RS or C-STORE; or stored before, and its record says so
        state = {"stored": "ingested", "stored-unlabeled": "ingested", "quarantined": "quarantined"}.get(outcome.fate, "rejected")
        record = SeriesRecord(
            series_instance_uid=outcome.series_instance_uid, state=state, fate=outcome.fate, source=source,
            series_number=outcome.series_number, modality=outcome.modality, first_received_at=now, last_received_at=now,
            instances=outcome.instances, scan_id=outcome.scan_ids[0] if outcome.scan_ids else None, scan_ids=outcome.scan_ids,
            reason=scrub_names(outcome.reason, labels) if outcome.reason else None,
            warnings=[scrub_names(w, labels) for w in outcome.warnings], decided_at=now)
        _write(store, dataset, record)


Assessment = Literal["ok", "pending", "refused", "present"]


def assess(store, dataset: str, instances: list[Received], *, max_voxels: int,
           time_series: TimeSeries = "refuse") -> tuple[Assessment, str | None]:
    """Whether the series of ``instances`` (all of it, de-identified, in memory) would be stored as it
    stands, without storing anything: ``ok``; ``pending`` with the reason when more instances may yet
    complete it (a missing slice, a mask whose images have not come); ``refused`` with the reason when
    no instance can mend it; ``present`` when its image is already in the dataset. A series that would
    be stored unlabeled is ``ok`` with its warning as the reason."""
    named = [Received(r.label, r.dataset, r.series_uid, label=r.label, series_number=r.series_number, modality=r.modality,
                      mask_problem=r.mask_problem and scrub_names(r.mask_problem, {r.name: r.label})) for r in instances]
    try:
        prepared = prepare_series(store, dataset, named, max_voxels=max_voxels, time_series=time_series)
    except Incomplete as exc:
        return "pending", str(exc)
    except Conflict as exc:
        return "present", str(exc)
    except InvalidInput as exc:  # TooLarge too
        return "refused", str(exc)
    return "ok", "; ".join(prepared.warnings) or None


def reject(store, dataset: str, series: str, reason: str) -> SeriesRecord:
    """Decide a staged series ``rejected`` now (:func:`assess` found it cannot be stored): its staged
    instances are removed and its record says why."""
    keys = _staged_keys(store, dataset, series)
    record = _read(store, dataset, series) or SeriesRecord(series_instance_uid=series, state="staged")
    record.state, record.fate, record.reason, record.decided_at = "rejected", "refused", reason, utcnow()
    record.instances = len(keys)
    _write(store, dataset, record)
    for key in keys:
        store.delete(key)
    log.info("DICOM series %s of dataset %s: rejected on arrival: %s", series, dataset, reason)
    return record


def staged_already(store, dataset: str, series: str) -> bool:
    """Whether ``series`` has instances staged (from an earlier request or association)."""
    record = _read(store, dataset, series)
    return record is not None and record.state == "staged"


def commit(store, dataset: str, series: str | None = None, *, max_voxels: int,
           on_ingested: Callable[[ScanEntry, ManifestVersion], None] | None = None,
           time_series: TimeSeries = "refuse") -> list[SeriesRecord]:
    """Assemble every staged series of ``dataset`` (or just ``series``) now, a time series as the
    project's ``time_series`` option says; returns their records."""
    staged = [r for r in records(store, dataset) if r.state == "staged" and (series is None or r.series_instance_uid == series)]
    if series is not None and not staged:
        raise NotFound(f"no staged series {series!r} in dataset {dataset!r}")
    return [_commit_one(store, dataset, r, max_voxels, on_ingested, time_series) for r in staged]


def _commit_one(store, dataset: str, record: SeriesRecord, max_voxels: int, on_ingested,
                time_series: TimeSeries = "refuse") -> SeriesRecord:
    series = record.series_instance_uid
    keys = _staged_keys(store, dataset, series)
    prepared = None
    try:
        if quarantined := quarantine_reason(store, dataset, series):
            record.state, record.fate, record.reason = "quarantined", "quarantined", quarantined
        else:
            instances = [_staged(store.get_bytes(key), series) for key in keys]
            if not instances:
                raise InvalidInput(f"series {series} has no staged instances left.")
            prepared = prepare_series(store, dataset, instances, max_voxels=max_voxels, time_series=time_series)
            commit_scans(store, dataset, [(p.entry, p.objects) for p in prepared.scans], on_ingested)
            record.state, record.scan_id = "ingested", prepared.scans[0].entry.scan_id
            record.scan_ids = [p.entry.scan_id for p in prepared.scans]
            record.fate, record.warnings = ("stored-unlabeled" if prepared.unlabeled else "stored"), list(prepared.warnings)
    except Conflict as exc:
        current = _read(store, dataset, series)
        if current is not None and current.state == "ingested":
            return current  # another committer registered this very series a moment ago
        record.state, record.fate, record.reason = "rejected", "already-present", str(exc)
    except (InvalidInput, TooLarge) as exc:
        record.state, record.fate, record.reason = "rejected", "refused", str(exc)
    record.decided_at = utcnow()
    record.instances = len(keys)
    _write(store, dataset, record)
    for key in keys:
        store.delete(key)
    store.delete(_marker(dataset, series))
    log.info("DICOM series %s of dataset %s: %s %s", series, dataset, record.fate, record.scan_id or record.reason or "")
    return record


def _staged(data: bytes, series: str) -> Received:
    """A staged (already de-identified) instance: parsed for geometry and pixels only — masks in full —
    and stored later as the very bytes that were staged; named as its sender knows it (``instance 3
    of series 7``), not by its staged file."""
    ds = read_instance(data, "a staged instance", geometry_only=True)
    if is_mask(ds):
        ds = read_instance(data, "a staged instance")
    label = instance_label(ds)
    return Received(label, ds, series, data=data, label=label, series_number=_int(ds.get("SeriesNumber")),
                    modality=str(ds.get("Modality", "") or "") or None)


def _int(value) -> int | None:
    try:
        return None if value is None or str(value).strip() == "" else int(float(str(value)))
    except (TypeError, ValueError, OverflowError):
        return None


def commit_quiet(stores: Mapping[str, object], quiet_s: float, *, max_voxels: int,
                 on_ingested: Callable[[str, str, ScanEntry, ManifestVersion], None] | None = None,
                 time_series: Callable[[str], TimeSeries] | None = None) -> list[SeriesRecord]:
    """Commit every staged series, in every project's store (name → store), that has had no instance
    for ``quiet_s``; ``on_ingested(project, dataset, entry, manifest)`` for each scan made;
    ``time_series(project)`` is the project's option for time series (asked only when one commits)."""
    done = []
    cutoff = utcnow() - timedelta(seconds=quiet_s)
    for project, store in stores.items():
        pending = sorted({tuple(key[len(STAGING):].split("/")[:2]) for key in store.list(STAGING)})
        for dataset, series in pending:
            record = _read(store, dataset, series)
            if record is not None and record.state == "staged" and record.last_received_at <= cutoff:
                announce = partial(on_ingested, project, dataset) if on_ingested else None
                option = time_series(project) if time_series is not None else "refuse"
                done.append(_commit_one(store, dataset, record, max_voxels, announce, option))
    return done
