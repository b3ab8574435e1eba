"""Ingest service: DICOM in. A REST upload of files (or zips) assembled at once; DICOMweb STOW-RS,
whose instances are staged until their series is committed (explicitly, or after a quiet period).
Either way every instance is de-identified in memory before anything is stored."""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Iterator
from typing import Literal

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydicom.dataset import Dataset

from medsynth.api.deps import BusDep, GuardDep, PrincipalDep, ProjectDep, SettingsDep, StoreDep
from medsynth.api.routes.scans import STREAMED, scan_announcer, scan_public
from medsynth.api.schemas import ScanPublic
from medsynth.api.upload_stream import FilesForm, read_files_form, upload_slots
from medsynth.core.errors import InvalidInput, MedsynthError, TooLarge, UnsupportedMediaType
from medsynth.core.names import check_name
from medsynth.datasets.dicom_ingest import group_series, prepare_series, quarantined_series, receive
from medsynth.datasets.dicom_staging import SeriesRecord, commit, records, stage
from medsynth.datasets.ingest import commit_scans
from medsynth.dicom.deid import Deidentifier, deid_policy
from medsynth.dicom.series import read_instance
from medsynth.runtime.telemetry import DICOM_INSTANCES, INGESTED
from medsynth.store.projects import Projects, TimeSeries

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/datasets", tags=["dicom"])

ZIP_MAGIC = b"PK\x03\x04"
DICOM_MEDIA_TYPE = "application/dicom"
# STOW-RS failure reasons (DICOM PS3.18 / PS3.7 status codes)
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


class Quarantined(BaseModel):
    name: str
    reason: str


class DicomUploadPublic(BaseModel):
    dataset: str
    scans: list[ScanPublic]
    quarantined: list[Quarantined]


class SeriesListPublic(BaseModel):
    dataset: str
    series: list[SeriesRecord]


def deidentifier(request: Request, project: str) -> Deidentifier:
    """The project's de-identifier (its key and options), made once per process."""
    cache: dict[str, Deidentifier] = request.app.state.__dict__.setdefault("deidentifiers", {})
    if project not in cache:
        cache[project] = Deidentifier(deid_policy(request.app.state.store, project))
    return cache[project]


def time_series_option(request: Request, project: str) -> TimeSeries:
    """The project's DICOM option for time series (read each time: one small object)."""
    return Projects(request.app.state.store).get(project).dicom.time_series


#: A zip declaring less than this, inflated, is not held to MEDSYNTH_MAX_ZIP_RATIO: small archives may
#: compress oddly well (blank frames) and cannot hurt.
ZIP_RATIO_FLOOR = 16 * 1024**2


def dicom_files(form: FilesForm, limit: int, max_ratio: float) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every DICOM file uploaded, zips opened from disk one member at a time, each
    zip checked by :func:`check_zip` from its central directory before any member is inflated. A member
    cannot inflate past the size it declares (zipfile stops there, and its CRC check then fails)."""
    inflated = 0
    for upload in form.files:
        if _head(upload, len(ZIP_MAGIC)) != ZIP_MAGIC:
            yield upload.filename, upload.read()
            continue
        try:
            with zipfile.ZipFile(upload.path if upload.data is None else io.BytesIO(upload.data)) as archive:
                members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")
                           and m.filename.rsplit("/", 1)[-1].upper() != "DICOMDIR"]
                inflated += check_zip(upload.filename, members, upload.size, inflated, limit, max_ratio)
                for member in members:
                    yield f"{upload.filename}:{member.filename}", archive.read(member)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise InvalidInput(f"{upload.filename} is not a readable zip archive: {exc}") from None


def check_zip(name: str, members: list[zipfile.ZipInfo], size: int, before: int, limit: int, max_ratio: float) -> int:
    """The bytes a zip of ``size`` bytes declares its ``members`` inflate to (their ``file_size`` in its
    central directory). :class:`TooLarge` (413) if that, with the ``before`` bytes of the upload's other
    zips, passes ``limit``, or if it is over :data:`ZIP_RATIO_FLOOR` and ``max_ratio`` times ``size``."""
    declared = sum(m.file_size for m in members)
    if before + declared > limit:
        others = f" ({before + declared} with the upload's other zips)" if before else ""
        raise TooLarge(f"{name} declares {declared} bytes inflated in {len(members)} files{others}, more than the "
                       f"{limit}-byte limit (MEDSYNTH_MAX_DICOM_UPLOAD_BYTES); refused before inflating it.")
    if declared > ZIP_RATIO_FLOOR and declared > max_ratio * size:
        raise TooLarge(f"{name} declares {declared} bytes inflated from {size} bytes ({declared / max(size, 1):.0f}:1), "
                       f"more than the {max_ratio:g}:1 MEDSYNTH_MAX_ZIP_RATIO allows (a zip bomb?); refused before "
                       "inflating it.")
    return declared


def _head(upload, n: int) -> bytes:
    if upload.data is not None:
        return upload.data[:n]
    with open(upload.path, "rb") as f:
        return f.read(n)


UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["file"],
        "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                "description": "DICOM Part 10 files, or zip archives of them; any number."}},
    }}},
}


@router.post("/{dataset}/dicom", status_code=status.HTTP_201_CREATED, response_model=DicomUploadPublic,
             openapi_extra={"requestBody": UPLOAD_BODY}, max_body_size=STREAMED,
             responses={413: {"description": "Over MEDSYNTH_MAX_DICOM_UPLOAD_BYTES or MEDSYNTH_MAX_VOXELS, or a zip declares "
                                             "more than MEDSYNTH_MAX_ZIP_RATIO times its size (checked before it is inflated)."},
                        422: {"description": "A file is not usable DICOM, a series is incomplete or inconsistent, or the "
                                             "upload holds two patients; the detail names the file or series."},
                        503: {"description": "Too many large uploads in progress (MEDSYNTH_MAX_CONCURRENT_LARGE_UPLOADS); "
                                             "Retry-After says when to try again."}})
async def upload_dicom(dataset: str, request: Request, settings: SettingsDep, store: StoreDep, bus: BusDep,
                       guard: GuardDep, principal: PrincipalDep, project: ProjectDep) -> DicomUploadPublic:
    """Upload one patient's DICOM (files or zips, multipart field ``file``, repeated). Each series becomes
    a scan, all of them one new dataset version; all are checked before any is stored and committed
    together, so a bad or duplicate series (422, 409) leaves nothing of the upload behind. Instances
    that may show identity in their pixels are quarantined (listed, not stored)."""
    _before_body(dataset, guard, principal, project)
    deid = deidentifier(request, project)
    time_series = time_series_option(request, project)
    form = await _read(request, settings, related=False,
                       usage="the upload must be multipart/form-data with one or more `file` parts (DICOM files or zips).")
    try:
        async with upload_slots(request.app, settings).hold(form.received):  # its series will be in memory
            return await run_in_threadpool(_ingest_upload, form, dataset, project, deid, time_series, settings, store, bus)
    except Exception as exc:
        INGESTED.labels(type(exc).__name__).inc()
        raise
    finally:
        form.close()


def _ingest_upload(form: FilesForm, dataset: str, project: str, deid: Deidentifier, time_series: TimeSeries, settings, store,
                   bus) -> DicomUploadPublic:
    files = dicom_files(form, settings.max_dicom_upload_bytes, settings.max_zip_ratio)
    received = [receive(read_instance(data, name), name, deid) for name, data in files]
    if not received:
        raise InvalidInput("the upload holds no files.")
    received = quarantined_series(received)
    quarantined = [Quarantined(name=r.name, reason=r.quarantined) for r in received if r.quarantined]
    series = group_series(received)
    if not series:
        raise InvalidInput(f"nothing to ingest: all {len(received)} instances were quarantined ({quarantined[0].reason}).")
    prepared = [scan for instances in series.values()
                for scan in prepare_series(store, dataset, instances, max_voxels=settings.max_voxels, time_series=time_series)]
    # one version for the whole upload: every series is stored, or (on any error) none
    manifest = commit_scans(store, dataset, [(p.entry, p.objects) for p in prepared], scan_announcer(bus, project, dataset))
    INGESTED.labels("accepted").inc(len(prepared))
    scans = [scan_public(dataset, p.entry, manifest) for p in prepared]
    DICOM_INSTANCES.labels("upload", "ingested").inc(len(received) - len(quarantined))
    DICOM_INSTANCES.labels("upload", "quarantined").inc(len(quarantined))
    return DicomUploadPublic(dataset=dataset, scans=scans, quarantined=quarantined)


def _before_body(dataset: str, guard, principal, project: str) -> None:
    """The checks made before the body is read: the dataset name and the caller's upload rate."""
    try:
        check_name(dataset, "dataset name")
        guard.limit_upload(principal, project)
    except Exception as exc:
        exc.http_headers = {"Connection": "close"}  # the body stays unread
        raise


async def _read(request: Request, settings, *, related: bool, usage: str) -> FilesForm:
    declared = request.headers.get("content-length")
    try:
        return await read_files_form(request.headers.get("content-type", ""), int(declared) if declared and declared.isdigit() else None,
                                     request.stream(), file_limit=settings.max_dicom_upload_bytes,
                                     total_limit=settings.max_dicom_upload_bytes, usage=usage, related=related)
    except Exception as exc:
        INGESTED.labels(type(exc).__name__).inc()
        exc.http_headers = {"Connection": "close"}  # the rest of the body stays unread
        raise


# --- DICOMweb STOW-RS --------------------------------------------------------------------------------

STOW_BODY = {
    "required": True,
    "content": {'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}},
}


@router.post("/{dataset}/dicomweb/studies", max_body_size=STREAMED, openapi_extra={"requestBody": STOW_BODY},
             response_class=JSONResponse,
             responses={200: {"description": "Every instance stored (staged for its series).",
                              "content": {"application/dicom+json": {}}},
                        202: {"description": "Some instances stored, some failed (FailedSOPSequence, Warning headers)."},
                        409: {"description": "No instance stored; each failure is in FailedSOPSequence with its reason."},
                        415: {"description": 'Not multipart/related; type="application/dicom".'}})
async def stow_rs(dataset: str, request: Request, settings: SettingsDep, store: StoreDep,
                  guard: GuardDep, principal: PrincipalDep, project: ProjectDep) -> JSONResponse:
    """DICOMweb STOW-RS (PS3.18 10.5): store instances; the base URL of this dataset's DICOMweb service
    is ``/v1/datasets/{dataset}/dicomweb``. Instances are de-identified, then staged: a series becomes a
    scan when it is committed (``POST …/dicom/commit``) or after MEDSYNTH_DICOM_QUIET_S without new
    instances. The response is the PS3.18 store-instances dataset; a failure's reason is also in a
    ``Warning: 299`` header."""
    _before_body(dataset, guard, principal, project)  # a bad name is the request's fault, not each instance's
    kind = request.headers.get("content-type", "")
    if "multipart/related" in kind and 'type="application/dicom"' not in kind.replace("'", '"') and "type=application/dicom" not in kind:
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom" (Part 10 instances); '
                                   f"got {kind!r}.")
    deid = deidentifier(request, project)
    form = await _read(request, settings, related=True, usage='STOW-RS takes multipart/related; type="application/dicom".')
    try:
        body, code, warnings = await run_in_threadpool(_stow, form, dataset, deid, store, str(request.url))
    finally:
        form.close()
    headers = {"Warning": ", ".join(f'299 medsynth "{w}"' for w in warnings)} if warnings else None
    return JSONResponse(body, status_code=code, media_type="application/dicom+json", headers=headers)


def _stow(form: FilesForm, dataset: str, deid: Deidentifier, store, url: str) -> tuple[dict, int, list[str]]:
    stored, failed, warnings = [], [], []
    for upload in form.files:
        part_type = form.part_types.get(upload.filename, "").split(";")[0].strip().lower()
        ds: Dataset | None = None
        try:
            if part_type != DICOM_MEDIA_TYPE:
                raise InvalidInput(f"{upload.filename} is {part_type or 'untyped'}, not {DICOM_MEDIA_TYPE}.")
            ds = read_instance(upload.read(), upload.filename)
            received = receive(ds, upload.filename, deid)
            if received.quarantined:
                raise InvalidInput(received.quarantined)
            stage(store, dataset, received, source="stow-rs")
            stored.append(_reference(received.dataset, f"{url}/{received.dataset.StudyInstanceUID}"))
            DICOM_INSTANCES.labels("stow-rs", "staged").inc()
        except MedsynthError as exc:
            code = CANNOT_UNDERSTAND if ds is None else PROCESSING_FAILURE
            failed.append(_failure(ds, code, deid))
            warnings.append(str(exc).replace('"', "'"))
            DICOM_INSTANCES.labels("stow-rs", "failed").inc()
    body: dict = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    code = 200 if not failed else 202 if stored else 409
    return body, code, warnings


def _reference(ds: Dataset, study_url: str) -> dict:
    return {"00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
            "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
            "00081190": {"vr": "UR", "Value": [study_url]}}


def _failure(ds: Dataset | None, code: int, deid: Deidentifier) -> dict:
    """A FailedSOPSequence item; the instance UID is given as de-identified (never the original)."""
    item: dict = {"00081197": {"vr": "US", "Value": [code]}}
    if ds is not None and "SOPClassUID" in ds:
        item["00081150"] = {"vr": "UI", "Value": [str(ds.SOPClassUID)]}
    if ds is not None and "SOPInstanceUID" in ds:
        item["00081155"] = {"vr": "UI", "Value": [deid.uid(str(ds.SOPInstanceUID))]}
    return item


# --- staged series -------------------------------------------------------------------------------------


@router.post("/{dataset}/dicom/commit", response_model=SeriesListPublic)
async def commit_series(dataset: str, request: Request, settings: SettingsDep, store: StoreDep, bus: BusDep, project: ProjectDep,
                        series: str | None = Query(None, description="One staged series (its de-identified UID); default all.")) -> SeriesListPublic:
    """Assemble staged series now instead of waiting for the quiet period; each record says
    ``ingested`` (with the scan id) or ``rejected`` (with the reason)."""
    done = await run_in_threadpool(commit, store, dataset, series, max_voxels=settings.max_voxels,
                                   on_ingested=scan_announcer(bus, project, dataset),
                                   time_series=time_series_option(request, project))
    return SeriesListPublic(dataset=dataset, series=done)


@router.get("/{dataset}/dicom/series", response_model=SeriesListPublic)
async def list_series(dataset: str, store: StoreDep,
                      state: Literal["staged", "ingested", "rejected"] | None = None) -> SeriesListPublic:
    """Every series sent to this dataset by STOW-RS or C-STORE, and what became of it."""
    found = await run_in_threadpool(records, store, dataset)
    return SeriesListPublic(dataset=dataset, series=[r for r in found if state is None or r.state == state])

