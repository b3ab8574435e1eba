"""Series that arrive one instance at a time (STOW-RS, C-STORE) wait here until they are complete.

A de-identified instance is staged under ``dicom/staging/<dataset>/<series>/<sop>.dcm`` of its project
and the series' record ``dicom/series/<dataset>/<series>.json`` notes when the last one came. A series is
assembled when someone commits it (``POST /v1/datasets/{d}/dicom/commit``) or when no instance has come
for ``MEDSYNTH_DICOM_QUIET_S`` (:func:`commit_quiet`, run by the ingest service). Its record then says
``ingested`` (with the scan id: ids, for a time series the project splits) or ``rejected`` (with the
reason), and its staged instances are removed.
Records are how a sender finds out what became of a series (``GET /v1/datasets/{d}/dicom/series``).

Concurrent committers (several ingest replicas) are safe: the dataset's scan-id claim lets one register
the scan; the other sees the same content already there and records the same outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Literal

from pydantic import BaseModel, Field

from medsynth.core.clock import utcnow
from medsynth.core.errors import Conflict, InvalidInput, NotFound, TooLarge
from medsynth.core.names import check_name
from medsynth.datasets.dicom_ingest import Received, instance_bytes, prepare_series
from medsynth.datasets.ingest import commit_scans
from medsynth.datasets.manifest import ManifestVersion, ScanEntry
from medsynth.dicom.masks import is_mask
from medsynth.dicom.series import read_instance
from medsynth.store.projects import TimeSeries

log = logging.getLogger(__name__)


class SeriesRecord(BaseModel):
    series_instance_uid: str = Field(description="As de-identified (remapped).")
    state: Literal["staged", "ingested", "rejected"]
    source: str = Field("", description="How the instances came: stow-rs, c-store:<calling AE title>.")
    first_received_at: datetime = Field(default_factory=utcnow)
    last_received_at: datetime = Field(default_factory=utcnow)
    instances: int = 0
    scan_id: str | None = None
    scan_ids: list[str] = Field(default_factory=list, description="Every scan the series became: one, or one per time "
                                "point of a time series the project splits (scan_id is the first).")
    reason: str | None = None
    decided_at: datetime | None = None


STAGING = "dicom/staging/"
RECORDS = "dicom/series/"


def _staging(dataset: str, series: str) -> str:
    return f"{STAGING}{check_name(dataset, 'dataset name')}/{check_name(series, 'series uid')}/"


def _record_key(dataset: str, series: str) -> str:
    return f"{RECORDS}{check_name(dataset, 'dataset name')}/{check_name(series, 'series uid')}.json"


def stage(store, dataset: str, received: Received, *, source: str) -> SeriesRecord:
    """Keep one de-identified instance until its series is committed (a resent instance replaces itself)."""
    series = received.series_uid
    store.put_bytes(f"{_staging(dataset, series)}{check_name(str(received.dataset.SOPInstanceUID), 'SOP instance uid')}.dcm",
                    instance_bytes(received.dataset))
    record = _read(store, dataset, series)
    now = utcnow()
    if record is None or record.state != "staged":  # a new series, or instances again after a decision
        record = SeriesRecord(series_instance_uid=series, state="staged", source=source, first_received_at=now)
    record.last_received_at = now  # one write per instance; counting them is left to whoever asks (records())
    _write(store, dataset, record)
    return record


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
    prefix = f"{RECORDS}{check_name(dataset, 'dataset name')}/"
    found = [_read(store, dataset, key[len(prefix):-len(".json")]) for key in store.list(prefix) if key.endswith(".json")]
    for record in found:
        if record is not None and record.state == "staged":
            record.instances = len(_staged_keys(store, dataset, record.series_instance_uid))
    return sorted((r for r in found if r is not None), key=lambda r: r.first_received_at)


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
        instances = [_staged(key.rsplit("/", 1)[-1], store.get_bytes(key), series) for key in keys]
        if not instances:
            raise InvalidInput(f"series {series} has no staged instances left.")
        prepared = prepare_series(store, dataset, instances, max_voxels=max_voxels, time_series=time_series)
        commit_scans(store, dataset, [(p.entry, p.objects) for p in prepared], on_ingested)
        record.state, record.scan_id, record.scan_ids = "ingested", prepared[0].entry.scan_id, [p.entry.scan_id for p in prepared]
    except Conflict as exc:
        current = _read(store, dataset, series)
        if current is not None and current.state == "ingested":
            return current  # another committer registered this very series a moment ago
        record.state, record.reason = "rejected", str(exc)
    except (InvalidInput, TooLarge) as exc:
        record.state, record.reason = "rejected", str(exc)
    record.decided_at = utcnow()
    record.instances = len(keys)
    _write(store, dataset, record)
    for key in keys:
        store.delete(key)
    log.info("DICOM series %s of dataset %s: %s %s", series, dataset, record.state, record.scan_id or record.reason or "")
    return record


def _staged(name: str, data: bytes, series: str) -> Received:
    """A staged (already de-identified) instance: parsed for geometry and pixels only — masks in full —
    and stored later as the very bytes that were staged."""
    ds = read_instance(data, name, geometry_only=True)
    if is_mask(ds):
        ds = read_instance(data, name)
    return Received(name, ds, series, data=data)


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
